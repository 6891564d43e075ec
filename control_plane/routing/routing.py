"""Choosing the runner for one request: eligibility, policy ranking, prefix affinity.

Pure: the router reads the hub's :class:`ConnectedRunner` objects and its own
in-memory tables (:mod:`control_plane.routing.load`, the affinity table), and
does no I/O, so every decision can be replayed in a unit test.

A decision is an *ordered list* of candidates, not one runner: the serving
layer walks it when a runner fails before the first byte (failover).

* **Eligible**: is in a pool the caller's tenant may use (its own or granted),
  serves the model (name or alias) on the endpoint asked for,
  has a tunnel that accepts streams, reported itself healthy in its last
  status frame, and matches every residency rule of the tenant against the
  labels its owner set in the control plane (never the ones it reports).
* **Policies** rank the eligible runners by an estimate of this request on
  each of them (see :func:`estimate`): ``latency`` by expected queue wait +
  service time, ``cost`` by expected dollars (ties within 5 % go to the
  faster), ``balanced`` by the sum of both, each relative to the best runner.
* **Prefix affinity** then moves the runner that last served the same
  conversation to the front, if it is within the bounded-load limit of
  consistent hashing with bounded loads (Mirrokni et al., 2018), does not
  make the request queue while another runner has a free slot, and its
  policy score is not much worse than the best. docs/api.md explains the
  numbers.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from outpost.control_plane.routing.affinity import AffinityTable
from outpost.control_plane.routing.load import (
    DEFAULT_DECODE_TPS,
    PREFILL_OVER_DECODE,
    ExternalLoad,
    RunnerStats,
    runner_status,
)
from outpost.control_plane.services.cost import HourlyCost, expected_cost
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.sdk.pricing import hourly_rate

if TYPE_CHECKING:
    from outpost.control_plane.settings import Settings

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "ENGINE_DOWN",
    "POLICIES",
    "Affinity",
    "Candidate",
    "Endpoint",
    "Estimate",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterConfig",
    "RoutingPolicy",
    "any_in_pools",
    "bounded_load_ok",
    "eligibility",
    "estimate",
    "rank",
    "residency_allows",
    "runner_load",
    "usd_per_hour",
]

RoutingPolicy = Literal["cost", "latency", "balanced"]
POLICIES: tuple[str, ...] = get_args(RoutingPolicy)
Endpoint = Literal["chat", "completions", "embeddings", "rerank"]
Affinity = Literal["hit", "overloaded", "miss", "off"]

#: Output tokens assumed when a request sets no ``max_tokens``. The same for
#: every runner, so it scales estimates without changing the order much.
DEFAULT_OUTPUT_TOKENS = 256
# Defaults until a runner has been observed; docs/api.md gives the reasons.
_COST_TIE = 0.05
#: Endpoints whose answers are numbers, not generated tokens.
_NO_OUTPUT = frozenset({"embeddings", "rerank"})
#: Eligibility reasons never reported: the runner does not exist for this request.
_SILENT = frozenset({"model", "pool"})
#: Eligibility reasons that mean the runner's engine for the model is down:
#: restarting after a crash or a hang, or still loading.
ENGINE_DOWN = frozenset({"restarting", "unhealthy"})


@dataclass(frozen=True)
class RouteRequest:
    """What routing knows about a request: never its text."""

    model: str
    endpoint: Endpoint = "chat"
    policy: RoutingPolicy = "balanced"
    # {"label": ["allowed", "values"]}; a runner must match every rule.
    residency: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Prefix-affinity keys, most specific first (see affinity.py).
    affinity_keys: tuple[str, ...] = ()
    prompt_tokens: int = 0
    max_tokens: int | None = None
    # The pools the caller's tenant may use (store.pools.usable_pool_ids). ``None`` only in
    # unit tests and benchmarks that route without a tenant; every API route sets it.
    pools: frozenset[str] | None = None
    # Capabilities the model must advertise beside the endpoint (ModelInfo.endpoints): "tools".
    needs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RouterConfig:
    strategy: Literal["policy", "round_robin"] = "policy"
    affinity: bool = True
    # A runner keeps a conversation while its load + 1 <= ceil((1+eps) * mean share).
    affinity_epsilon: float = 0.25
    # ...and while its policy score is at most (1 + this) x the best runner's.
    affinity_max_regret: float = 1.0
    affinity_ttl_s: float = 600.0
    affinity_max_entries: int = 100_000
    # Slow-down of a request per unit of the runner's utilisation (batched decoding).
    share_penalty: float = 0.5
    # Price of a runner that states no cost model, $/hour ("cpu-small" in services/cost).
    default_usd_per_hour: float = 0.10
    ewma_alpha: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> RouterConfig:
        return cls(
            strategy=settings.routing_strategy,
            affinity=settings.routing_affinity,
            affinity_epsilon=settings.routing_affinity_epsilon,
        )


# --- eligibility -------------------------------------------------------------------


def residency_allows(labels: Mapping[str, str], rules: Mapping[str, Sequence[str]]) -> bool:
    """Every rule must match; a runner without the label fails closed."""
    return all(labels.get(label) in allowed for label, allowed in rules.items())


def eligibility(runner: ConnectedRunner, req: RouteRequest) -> str | None:
    """``None`` when ``runner`` may serve ``req``; else why not (for logs and errors)."""
    info = runner.serves(req.model)
    if info is None:
        return "model"
    if req.pools is not None and runner.pool_id not in req.pools:
        return "pool"  # another tenant's runner, not granted: as if it did not exist
    if req.endpoint not in info.endpoints:
        return "endpoint"
    if not req.needs <= set(info.endpoints):
        return "capability"  # e.g. tool calls, which this runner's engine cannot make
    if req.residency and not residency_allows(runner.labels, req.residency):
        return "residency"
    if runner.usable_link() is None:
        return "draining"
    status = runner_status(runner)
    if info.name in status.unavailable_models:
        return "restarting"  # this model's engine is down; the runner serves its others
    if not status.healthy:
        return "unhealthy"  # no engine of the runner is up (or it predates per-model status)
    return None


def any_in_pools(runners: Iterable[ConnectedRunner], req: RouteRequest | None) -> bool:
    """Whether any of ``runners`` is in a pool ``req``'s tenant may use (all count without
    pools)."""
    pools = req.pools if req is not None else None
    return any(pools is None or r.pool_id in pools for r in runners)


def runner_load(runner: ConnectedRunner, external: int = 0) -> int:
    """Requests open on the runner: ours (exact, now) plus ``external`` ones we did not send."""
    return runner.in_flight + external


# --- estimates ---------------------------------------------------------------------


#: A runner's rate, $/hour, from its owner-set cost model: the one rule pricing uses too.
usd_per_hour = hourly_rate


@dataclass(frozen=True)
class Estimate:
    load: int
    wait_s: float
    service_s: float
    cost_usd: float

    @property
    def latency_s(self) -> float:
        return self.wait_s + self.service_s


def estimate(
    runner: ConnectedRunner,
    req: RouteRequest,
    stats: RunnerStats | None,
    config: RouterConfig,
    external: int = 0,
) -> Estimate:
    """Expected wait, service time and cost of ``req`` on ``runner`` at its current load.

    service = prompt / prefill_tps + output / decode_tps, slowed by
    ``share_penalty`` x utilisation (requests decoding together share the
    engine); wait = whole service rounds queued ahead once every slot is taken.
    """
    stats = stats or RunnerStats()
    decode, prefill = stats.decode_tps or DEFAULT_DECODE_TPS, stats.prefill_tps
    output = 0 if req.endpoint in _NO_OUTPUT else (req.max_tokens or DEFAULT_OUTPUT_TOKENS)
    base = req.prompt_tokens / prefill + output / decode
    load, cap = runner_load(runner, external), max(runner.capacity, 1)
    utilisation = min(load, cap) / cap
    kv = runner_status(runner).kv_cache_usage or 0.0
    # A nearly full KV cache makes the engine defer or preempt requests.
    pressure = max(0.0, kv - 0.8) / 0.2
    service = base * (1 + config.share_penalty * (utilisation + pressure))
    wait = math.ceil((load + 1 - cap) / cap) * service if load >= cap else 0.0
    cost = expected_cost(
        HourlyCost(usd_per_hour(runner.cost, config.default_usd_per_hour)),
        req.prompt_tokens,
        output,
        decode,
        prefill_tokens_per_second=prefill,
    )
    return Estimate(load=load, wait_s=wait, service_s=service, cost_usd=cost)


# --- ranking -------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    runner: ConnectedRunner
    estimate: Estimate
    score: float  # lower is better; 1.0 is the best runner under the policy


def _relative(values: list[float], floor: float) -> list[float]:
    best = min(values)
    return [(v + floor) / (best + floor) for v in values]


def _runner_id(runner: ConnectedRunner) -> str:
    return runner.runner_id


@dataclass
class _Scored:
    """Every eligible runner's estimate and score as parallel lists, runners sorted by id.

    No object per runner: at a thousand runners, building a :class:`Candidate`
    and an :class:`Estimate` for each was a fifth of a routing decision, and
    the serving layer reads only the first few (``Router.route``'s ``limit``).
    """

    runners: list[ConnectedRunner]
    loads: list[int]
    caps: list[int]  # capacity, at least 1
    waits: list[float]
    services: list[float]
    costs: list[float]
    scores: list[float]
    order: list[int]  # indices, best first under the policy

    def candidate(self, i: int) -> Candidate:
        est = Estimate(
            load=self.loads[i],
            wait_s=self.waits[i],
            service_s=self.services[i],
            cost_usd=self.costs[i],
        )
        return Candidate(self.runners[i], est, self.scores[i])

    def index(self, runner_id: str) -> int | None:
        i = bisect.bisect_left(self.runners, runner_id, key=_runner_id)
        return i if i < len(self.runners) and self.runners[i].runner_id == runner_id else None


def _score(
    runners: Iterable[ConnectedRunner],
    req: RouteRequest,
    stats: Mapping[str, RunnerStats],
    config: RouterConfig,
    external: Callable[[ConnectedRunner], int],
) -> _Scored:
    """:func:`estimate` for every runner, then the policy's order; one loop, the same arithmetic.

    The loop repeats :func:`estimate` inline (a call per runner cost more than
    its arithmetic); tests/api/test_route_index.py checks that both agree.
    """
    ordered = sorted(runners, key=_runner_id)
    output = 0 if req.endpoint in _NO_OUTPUT else (req.max_tokens or DEFAULT_OUTPUT_TOKENS)
    prompt, penalty, default_rate = (
        req.prompt_tokens,
        config.share_penalty,
        config.default_usd_per_hour,
    )
    loads: list[int] = []
    caps: list[int] = []
    waits: list[float] = []
    services: list[float] = []
    costs: list[float] = []
    lats: list[float] = []
    no_stats = RunnerStats()
    for r in ordered:
        decode = (stats.get(r.runner_id) or no_stats).decode_tps or DEFAULT_DECODE_TPS
        # expected_cost's seconds and the service time's base are the same sum.
        base = prompt / (decode * PREFILL_OVER_DECODE) + output / decode
        load = r.in_flight + external(r)
        cap = max(r.capacity, 1)
        kv = runner_status(r).kv_cache_usage or 0.0
        pressure = max(0.0, kv - 0.8) / 0.2
        service = base * (1 + penalty * (min(load, cap) / cap + pressure))
        wait = math.ceil((load + 1 - cap) / cap) * service if load >= cap else 0.0
        loads.append(load)
        caps.append(cap)
        waits.append(wait)
        services.append(service)
        lats.append(wait + service)
        costs.append(usd_per_hour(r.cost, default_rate) / 3600.0 * base)
    if not ordered:
        return _Scored([], [], [], [], [], [], [], [])
    lat = _relative(lats, 1e-3)
    cost = _relative(costs, 1e-12)
    indices = range(len(ordered))
    if req.policy == "latency":
        scores = lat
        order = sorted(indices, key=list(zip(lat, cost, strict=True)).__getitem__)
    elif req.policy == "cost":
        scores = cost
        order = _cost_order(cost, lat)
    else:
        scores = [(c + t) / 2 for c, t in zip(cost, lat, strict=True)]
        order = sorted(indices, key=scores.__getitem__)
    return _Scored(ordered, loads, caps, waits, services, costs, scores, order)


def rank(
    runners: Iterable[ConnectedRunner],
    req: RouteRequest,
    stats: Mapping[str, RunnerStats],
    config: RouterConfig,
    external: Callable[[ConnectedRunner], int] = lambda _: 0,
) -> list[Candidate]:
    """Eligible runners, best first under ``req.policy``. Ties go to the lower id (stable)."""
    scored = _score(runners, req, stats, config, external)
    return [scored.candidate(i) for i in scored.order]


def _cost_order(cost: list[float], lat: list[float]) -> list[int]:
    """Cheapest first; runners within 5 % of each other's price go by latency."""
    by_cost = sorted(range(len(cost)), key=cost.__getitem__)
    order: list[int] = []
    start = 0
    while start < len(by_cost):  # tiers are runs of the cost-sorted list: one pass
        limit = cost[by_cost[start]] * (1 + _COST_TIE)
        end = start + 1
        while end < len(by_cost) and cost[by_cost[end]] <= limit:
            end += 1
        order += sorted(by_cost[start:end], key=lat.__getitem__)
        start = end
    return order


def bounded_load_ok(target: Candidate, candidates: Sequence[Candidate], epsilon: float) -> bool:
    """Consistent hashing with bounded loads, weighted by capacity.

    With this request added, no runner may hold more than
    ``ceil((1 + eps) * (total load + 1) * capacity / total capacity)``; and a
    full runner is not used while another has a free slot, since waiting for
    a slot costs a whole request's time and a cache miss only a prefill.
    """
    return _within_bound(
        target.estimate.load,
        target.runner.capacity,
        sum(c.estimate.load for c in candidates),
        sum(max(c.runner.capacity, 1) for c in candidates),
        epsilon,
        lambda: all(c.estimate.load >= c.runner.capacity for c in candidates),
    )


def _within_bound(
    load: int,
    capacity: int,
    total_load: int,
    total_capacity: int,
    epsilon: float,
    all_full: Callable[[], bool],
) -> bool:
    """:func:`bounded_load_ok` on sums; ``all_full`` is asked only when the target is full."""
    bound = math.ceil((1 + epsilon) * (total_load + 1) * max(capacity, 1) / total_capacity)
    if load + 1 > max(bound, 1):
        return False
    return load < capacity or all_full()


# --- the stateful router ---------------------------------------------------------------


@dataclass
class RouteDecision:
    candidates: list[Candidate]
    policy: RoutingPolicy
    affinity: Affinity
    excluded: dict[str, str] = field(default_factory=dict)  # runner id -> reason
    excluded_names: dict[str, str] = field(default_factory=dict)  # runner id -> name, for errors

    @property
    def runners(self) -> list[ConnectedRunner]:
        return [c.runner for c in self.candidates]

    def header(self) -> str:
        return f"{self.policy}; affinity={self.affinity}"


class Router:
    """Ranking plus the two things it remembers: conversations' runners and runner speeds."""

    def __init__(
        self, config: RouterConfig | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.config = config or RouterConfig()
        kwargs = {"clock": clock} if clock is not None else {}
        self.affinity = AffinityTable(
            self.config.affinity_ttl_s, self.config.affinity_max_entries, **kwargs
        )
        self.stats: dict[str, RunnerStats] = {}
        self.external = ExternalLoad()
        self._rr = itertools.count()

    def route(
        self, runners: Iterable[ConnectedRunner], req: RouteRequest, *, limit: int | None = None
    ) -> RouteDecision:
        """The candidates for ``req``, best first; with ``limit``, only the first ``limit`` of them.

        The affinity check still weighs every eligible runner, so a limit
        changes only how much of the order is returned, not its head.
        """
        eligible: list[ConnectedRunner] = []
        excluded: dict[str, str] = {}
        names: dict[str, str] = {}
        for r in runners:
            if (why := eligibility(r, req)) is None:
                eligible.append(r)
            elif why not in _SILENT:
                excluded[r.runner_id] = why
                names[r.runner_id] = r.name
        if self.config.strategy == "round_robin":
            return self._round_robin(eligible, req, excluded, names, limit)
        scored = _score(eligible, req, self.stats, self.config, self.external)
        top = scored.order if limit is None else scored.order[:limit]
        ranked = [scored.candidate(i) for i in top]
        affinity: Affinity = "off"
        if self.config.affinity and req.affinity_keys and ranked:
            affinity = "miss"
            runner_id = self.affinity.lookup(req.affinity_keys)
            i = scored.index(runner_id) if runner_id is not None else None
            if i is not None:
                if self._keeps(scored, i):
                    affinity = "hit"
                    target = scored.candidate(i)
                    ranked = [target, *(c for c in ranked if c.runner is not target.runner)][
                        : len(top)
                    ]
                else:
                    affinity = "overloaded"
        return RouteDecision(ranked, req.policy, affinity, excluded, names)

    def _keeps(self, scored: _Scored, i: int) -> bool:
        """May runner ``i`` keep its conversation? :func:`bounded_load_ok`, and not much worse
        than the best."""
        loads, runners = scored.loads, scored.runners
        ok = _within_bound(
            loads[i],
            runners[i].capacity,
            sum(loads),
            sum(scored.caps),
            self.config.affinity_epsilon,
            lambda: all(ld >= r.capacity for ld, r in zip(loads, runners, strict=True)),
        )
        return ok and scored.scores[i] <= scored.scores[scored.order[0]] * (
            1 + self.config.affinity_max_regret
        )

    def _round_robin(
        self,
        eligible: list[ConnectedRunner],
        req: RouteRequest,
        excluded: dict[str, str],
        names: dict[str, str],
        limit: int | None,
    ) -> RouteDecision:
        # The benchmark baseline: no policy, no load, no affinity.
        eligible.sort(key=_runner_id)
        if eligible:
            k = next(self._rr) % len(eligible)
            eligible = (eligible[k:] + eligible[:k])[:limit]
        cands = [
            Candidate(
                r, estimate(r, req, self.stats.get(r.runner_id), self.config, self.external(r)), 1.0
            )
            for r in eligible
        ]
        return RouteDecision(cands, req.policy, "off", excluded, names)

    def started(self, runner: ConnectedRunner) -> None:
        """A request was sent to ``runner``: count it (and remember when, see
        :class:`ExternalLoad`)."""
        runner.in_flight += 1
        self.external.note(runner, runner.in_flight - 1)

    def finished(self, runner: ConnectedRunner) -> None:
        runner.in_flight -= 1
        self.external.note(runner, runner.in_flight + 1)

    def served(self, req: RouteRequest, runner_id: str) -> None:
        """The runner answered ``req``: its next turns should find their prefix there."""
        if self.config.affinity and req.affinity_keys:
            self.affinity.remember(req.affinity_keys, runner_id)

    def observe(
        self,
        runner_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_s: float,
        total_s: float,
        queued: bool,
        streamed: bool,
    ) -> None:
        self.stats.setdefault(runner_id, RunnerStats()).observe(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            ttft_s=ttft_s,
            total_s=total_s,
            queued=queued,
            streamed=streamed,
            alpha=self.config.ewma_alpha,
        )
