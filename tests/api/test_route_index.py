"""Routing at scale (issue 11): the hub's index of runners by model, and the router's one-loop
ranking.

The index must always agree with a scan of every runner (``serves``,
``model_names``); the fast ranking and ``limit`` must give exactly the order,
estimates, scores and affinity outcome of the straightforward ranking below
(the implementation before the index, kept here as the reference).
"""

from __future__ import annotations

import math
import random

import pytest

from harness.sim import set_status, simulated_runner
from outpost.control_plane.routing.load import RunnerStats
from outpost.control_plane.routing.routing import (
    _COST_TIE,
    Candidate,
    Router,
    RouterConfig,
    RouteRequest,
    bounded_load_ok,
    estimate,
    rank,
)
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import Link
from outpost.sdk.protocol import ModelInfo, StatusFrame


async def _send(_: str) -> None:
    return None


async def _close(_: int, __: str) -> None:
    return None


def hello(runner_id: str, *models: tuple[str, list[str]]) -> tuple[Link, ConnectedRunner]:
    """A new connection's link and the runner its hello describes."""
    info = ConnectedRunner(
        runner_id=runner_id,
        tenant_id="ten_1",
        name=runner_id,
        capacity=4,
        models=[
            ModelInfo(name=name, engine="xllamacpp", aliases=aliases) for name, aliases in models
        ],
    )
    return Link(runner_id, f"sess-{runner_id}-{random.random()}", _send, 16, _close), info


def ids(runners: list[ConnectedRunner]) -> list[str]:
    return sorted(r.runner_id for r in runners)


def assert_agrees_with_a_scan(hub: TunnelHub, *names: str) -> None:
    for name in names:
        assert ids(hub.runners_for(name)) == ids([r for r in hub.routable() if r.serves(name)]), (
            name
        )
        assert hub.is_served(name) == (name in hub.model_names()), name


# --- the hub's index ---------------------------------------------------------------


def test_a_connected_runner_is_found_by_model_and_alias() -> None:
    hub = TunnelHub()
    a = hub.attach(*hello("a", ("llama", ["chat", "default"])))
    hub.attach(*hello("b", ("qwen", [])))
    assert (
        hub.runners_for("llama") == [a]
        and hub.runners_for("chat") == [a]
        and hub.runners_for("default") == [a]
    )
    assert ids(hub.runners_for("qwen")) == ["b"]
    assert hub.runners_for("mistral") == [] and not hub.is_served("mistral")
    assert_agrees_with_a_scan(hub, "llama", "chat", "default", "qwen", "mistral")


def test_a_runner_leaves_the_index_with_its_last_link() -> None:
    hub = TunnelHub()
    first, info = hello("a", ("llama", ["chat"]))
    hub.attach(first, info)
    second, again = hello("a", ("llama", ["chat"]))
    hub.attach(second, again)
    hub.detach(first)
    assert ids(hub.runners_for("chat")) == ["a"], "one link left: still connected"
    hub.detach(second)
    assert hub.runners_for("llama") == [] and hub.runners_for("chat") == []
    assert not hub.is_served("llama") and hub.model_names() == {}
    hub.detach(second)  # a second detach of the same link changes nothing
    assert_agrees_with_a_scan(hub, "llama", "chat")


def test_a_new_hello_replaces_what_the_runner_serves() -> None:
    hub = TunnelHub()
    first, info = hello("a", ("llama", ["chat"]))
    hub.attach(first, info)
    hub.attach(*hello("b", ("llama", [])))
    second, changed = hello(
        "a", ("qwen", ["chat"])
    )  # reconnected with another model under the same alias
    runner = hub.attach(second, changed)
    assert ids(hub.runners_for("llama")) == ["b"], "a no longer serves llama"
    assert hub.runners_for("qwen") == [runner] and hub.runners_for("chat") == [runner]
    hub.detach(first)
    assert hub.runners_for("qwen") == [runner], (
        "the old connection going does not take the new models"
    )
    assert_agrees_with_a_scan(hub, "llama", "qwen", "chat")


def test_runners_of_other_replicas_are_found_unless_held_here() -> None:
    hub = TunnelHub()
    local = hub.attach(*hello("a", ("llama", [])))
    _, remote_copy = hello("a", ("llama", []))
    _, elsewhere = hello("z", ("llama", ["chat"]))
    hub.remote = {"a": remote_copy, "z": elsewhere}
    assert ids(hub.runners_for("llama")) == ["a", "z"]
    assert any(r is local for r in hub.runners_for("llama")), (
        "the local object wins, as in routable()"
    )
    assert hub.runners_for("chat") == [elsewhere] and hub.is_served("chat")
    assert_agrees_with_a_scan(hub, "llama", "chat", "qwen")


def test_a_model_whose_engine_is_down_stays_indexed_and_routing_says_why() -> None:
    hub = TunnelHub()
    link, info = hello("a", ("llama", ["chat"]), ("qwen", []))
    runner = hub.attach(link, info)
    link.dispatch(StatusFrame(unavailable_models=["llama"]))
    assert hub.runners_for("chat") == [runner], (
        "the index says what the runner serves, not what is up"
    )
    decision = Router().route(hub.runners_for("chat"), RouteRequest(model="chat"))
    assert decision.candidates == [] and decision.excluded == {"a": "restarting"}
    assert Router().route(hub.runners_for("qwen"), RouteRequest(model="qwen")).runners == [runner]


def test_the_index_agrees_with_a_scan_through_random_churn() -> None:
    rng = random.Random(11)
    hub = TunnelHub()
    names = ["m0", "m1", "m2", "x0", "x1"]
    links: dict[str, list[Link]] = {}
    for _ in range(400):
        runner_id = f"r{rng.randrange(12)}"
        if rng.random() < 0.6:
            models = [
                (f"m{i}", rng.sample(["x0", "x1"], rng.randrange(3)))
                for i in rng.sample(range(3), rng.randrange(1, 3))
            ]
            link, info = hello(runner_id, *models)
            hub.attach(link, info)
            links.setdefault(runner_id, []).append(link)
        elif links.get(runner_id):
            hub.detach(links[runner_id].pop(rng.randrange(len(links[runner_id]))))
        assert_agrees_with_a_scan(hub, *names)


# --- the ranking, against the reference ---------------------------------------------


def reference_rank(
    runners: list[ConnectedRunner],
    req: RouteRequest,
    stats: dict[str, RunnerStats],
    config: RouterConfig,
    external,
) -> list[Candidate]:
    """One :func:`estimate` and one :class:`Candidate` per runner, sorted with plain keys."""
    runners = sorted(runners, key=lambda r: r.runner_id)
    if not runners:
        return []
    ests = [estimate(r, req, stats.get(r.runner_id), config, external(r)) for r in runners]
    lat_best = min(e.latency_s for e in ests)
    cost_best = min(e.cost_usd for e in ests)
    lat = [(e.latency_s + 1e-3) / (lat_best + 1e-3) for e in ests]
    cost = [(e.cost_usd + 1e-12) / (cost_best + 1e-12) for e in ests]
    if req.policy == "latency":
        scores, order = lat, sorted(range(len(runners)), key=lambda i: (lat[i], cost[i]))
    elif req.policy == "cost":
        scores, order = cost, []
        by_cost = sorted(range(len(runners)), key=lambda i: cost[i])
        while by_cost:  # a tier: the cheapest left and every runner within 5 % of its price
            limit = cost[by_cost[0]] * (1 + _COST_TIE)
            end = next(
                (k for k in range(1, len(by_cost)) if cost[by_cost[k]] > limit), len(by_cost)
            )
            order += sorted(by_cost[:end], key=lambda i: lat[i])
            by_cost = by_cost[end:]
    else:
        scores = [(c + t) / 2 for c, t in zip(cost, lat, strict=True)]
        order = sorted(range(len(runners)), key=lambda i: scores[i])
    return [Candidate(runners[i], ests[i], scores[i]) for i in order]


def reference_bounded_load_ok(
    target: Candidate, candidates: list[Candidate], epsilon: float
) -> bool:
    total = sum(c.estimate.load for c in candidates)
    capacity = sum(max(c.runner.capacity, 1) for c in candidates)
    bound = math.ceil((1 + epsilon) * (total + 1) * max(target.runner.capacity, 1) / capacity)
    if target.estimate.load + 1 > max(bound, 1):
        return False
    full = target.estimate.load >= target.runner.capacity
    return not full or all(c.estimate.load >= c.runner.capacity for c in candidates)


def random_fleet(
    rng: random.Random, n: int
) -> tuple[list[ConnectedRunner], dict[str, RunnerStats]]:
    fleet, stats = [], {}
    for i in range(n):
        r = simulated_runner(
            f"r{rng.randrange(10 * n):05d}-{i}",
            capacity=rng.choice([0, 1, 2, 4, 16]),
            usd_per_hour=rng.choice([None, 0.1, 0.1, 0.105, 0.3, 1.0]),
            in_flight=rng.randrange(0, 20),
        )
        set_status(
            r,
            running=rng.randrange(0, 24),
            waiting=rng.randrange(0, 4),
            kv=rng.choice([None, 0.1, 0.85, 0.97]),
        )
        if rng.random() < 0.5:
            stats[r.runner_id] = RunnerStats(
                decode_tps=rng.choice([5.0, 20.0, 33.3]), observations=3
            )
        fleet.append(r)
    return fleet, stats


@pytest.mark.parametrize("policy", ["balanced", "cost", "latency"])
def test_the_ranking_is_the_reference_ranking(policy: str) -> None:
    rng = random.Random(policy)
    config = RouterConfig()
    for n in (1, 2, 7, 60):
        for _ in range(20):
            fleet, stats = random_fleet(rng, n)
            req = RouteRequest(
                model="chat-model",
                policy=policy,
                prompt_tokens=rng.randrange(0, 3000),  # type: ignore[arg-type]
                max_tokens=rng.choice([None, 1, 64, 512]),
                endpoint=rng.choice(["chat", "completions"]),
            )
            external = Router().external
            assert rank(fleet, req, stats, config, external) == reference_rank(
                fleet, req, stats, config, external
            )


@pytest.mark.parametrize("policy", ["balanced", "cost", "latency"])
def test_a_limit_returns_the_head_of_the_full_decision(policy: str) -> None:
    rng = random.Random(f"limit-{policy}")
    outcomes = {"hit": 0, "overloaded": 0}
    for _ in range(60):
        fleet, _stats = random_fleet(rng, rng.randrange(1, 40))
        router = Router(RouterConfig(affinity_max_regret=rng.choice([0.0, 1.0, 10.0])))
        req = RouteRequest(model="chat-model", policy=policy, affinity_keys=("k",))  # type: ignore[arg-type]
        router.served(req, rng.choice(fleet).runner_id)
        full = router.route(fleet, req)
        # The reference affinity step, on the full ranking.
        ranked = reference_rank(fleet, req, {}, router.config, router.external)
        target = next(c for c in ranked if c.runner.runner_id == router.affinity.lookup(("k",)))
        keeps = reference_bounded_load_ok(
            target, ranked, router.config.affinity_epsilon
        ) and target.score <= ranked[0].score * (1 + router.config.affinity_max_regret)
        if keeps:
            ranked.remove(target)
            ranked.insert(0, target)
        assert full.affinity == ("hit" if keeps else "overloaded")
        outcomes[full.affinity] += 1
        assert full.candidates == ranked
        for limit in (1, 2, 5, 100):
            cut = router.route(fleet, req, limit=limit)
            assert cut.candidates == full.candidates[:limit] and cut.affinity == full.affinity
    assert min(outcomes.values()) >= 5, outcomes  # both branches were exercised


def test_scores_stay_finite_and_relative_to_the_best() -> None:
    fleet, stats = random_fleet(random.Random(3), 50)
    ranked = rank(fleet, RouteRequest(model="chat-model"), stats, RouterConfig())
    assert all(math.isfinite(c.score) and c.score >= 1.0 for c in ranked)
    assert min(c.score for c in ranked) == 1.0


def test_bounded_load_ok_is_the_reference() -> None:
    rng = random.Random(5)
    for _ in range(200):
        fleet, _ = random_fleet(rng, rng.randrange(1, 12))
        ranked = rank(
            fleet, RouteRequest(model="chat-model"), {}, RouterConfig(), Router().external
        )
        for target in ranked:
            for eps in (0.0, 0.25, 2.0):
                assert bounded_load_ok(target, ranked, eps) == reference_bounded_load_ok(
                    target, ranked, eps
                )
