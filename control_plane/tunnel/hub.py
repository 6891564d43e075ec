"""Registry of connected runners and their links (in this process).

The hub also keeps an index of its runners by model name and alias, updated
when a hello attaches or refreshes a runner and when its last link goes, so
that a request looks only at the runners serving its model: with a thousand
runners, scanning them all on every request was a visible part of its cost
(bench/bench_scale.py, issue 11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic

from typing_extensions import TypeVar

from outpost.control_plane.tunnel.link import Link, RunnerLink
from outpost.sdk.pricing import CostModel, hourly_rate
from outpost.sdk.protocol import CloseCode, GoawayFrame, ModelInfo

__all__ = ["ConnectedRunner", "LinkT", "RunnerListener", "TunnelHub"]

log = logging.getLogger("outpost.tunnel")

# The kind of link a runner is reached through. This process's runners (``TunnelHub.runners``)
# hold their own tunnels, ``ConnectedRunner[Link]``; those only other replicas hold
# (``TunnelHub.remote``, kept by cluster/registry.py) hold ``RemoteLink``s. Code that serves
# both (routing, admission, failover) takes a bare ``ConnectedRunner``: the default,
# ``ConnectedRunner[RunnerLink]``. Covariant so that a local runner is one of those; links are
# appended only where the concrete kind is known (``TunnelHub.attach``, the registry).
LinkT = TypeVar("LinkT", bound=RunnerLink, default=RunnerLink, covariant=True)


@dataclass
class ConnectedRunner(Generic[LinkT]):
    runner_id: str
    tenant_id: str
    name: str
    models: list[ModelInfo]
    capacity: int
    # Owner-set in the control plane (store.runners), never taken from a hello.
    labels: dict[str, str] = field(default_factory=dict)
    cost: CostModel = field(default_factory=CostModel)
    hardware: dict[str, Any] = field(default_factory=dict)
    links: list[LinkT] = field(default_factory=list)
    in_flight: int = 0  # requests this control plane has open on the runner
    queued: int = 0  # requests waiting in this control plane's admission queue for it
    # The runner's one pool (of ``tenant_id``); "" (an older replica's entry) is in no pool.
    pool_id: str = ""
    # Replica id -> what a ready deployment replica on it serves (control_plane/deployments);
    # also in ``models``, after the hello's own.
    deployed: dict[str, ModelInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Stored rows and older replicas' registry entries hold the cost model as a mapping.
        # The field says CostModel because every reader gets one; a mapping only arrives here.
        if not isinstance(self.cost, CostModel):
            self.cost = CostModel.from_mapping(self.cost)  # type: ignore[unreachable]

    def serves(self, model: str) -> ModelInfo | None:
        for m in self.models:
            if m.name == model or model in m.aliases:
                return m
        return None

    def usable_link(self) -> LinkT | None:
        if len(self.links) == 1:  # the common case, on the routing hot path
            only = self.links[0]
            return None if only.closed or only.draining else only
        live = [ln for ln in self.links if not ln.closed and not ln.draining]
        return min(live, key=_open_streams) if live else None

    @property
    def draining(self) -> bool:
        return all(ln.draining for ln in self.links)

    @property
    def usd_per_second(self) -> float:
        """The runner's cost rate, from its owner-set cost model (sdk.pricing.hourly_rate)."""
        return hourly_rate(self.cost) / 3600.0


def _open_streams(link: RunnerLink) -> int:
    # A function of RunnerLink, not a lambda of LinkT: mypy refuses a covariant type variable as
    # a parameter type.
    return link.open_streams


#: Called with (runner, connected): after a hello attaches or refreshes a
#: runner, and when its last link is gone.
RunnerListener = Callable[[ConnectedRunner, bool], None]


class TunnelHub:
    def __init__(self) -> None:
        self.runners: dict[str, ConnectedRunner[Link]] = {}
        self.changed = asyncio.Event()
        self.listeners: list[RunnerListener] = []  # e.g. admission capacity
        # Runners other control-plane replicas hold, kept by control_plane/cluster
        # (empty in a single process); a request reaches them through Redis.
        self.remote: dict[str, ConnectedRunner] = {}
        # Model name or alias -> runner id -> runner, for this process's runners only:
        # control_plane/cluster rewrites remote runners in place, so those are scanned.
        self._by_model: dict[str, dict[str, ConnectedRunner[Link]]] = {}

    def attach(self, link: Link, info: ConnectedRunner[Link]) -> ConnectedRunner[Link]:
        current = self.runners.get(info.runner_id)
        if current is None:
            current = info
            self.runners[info.runner_id] = current
        else:
            # A later connection's hello refreshes what the runner serves; labels, cost and
            # pool come from the runner's row (what its owner set), read again at each handshake.
            self._unindex(current)
            current.models, current.capacity = info.models, info.capacity
            current.models = [*current.models, *current.deployed.values()]
            current.labels, current.cost, current.hardware = info.labels, info.cost, info.hardware
            current.pool_id = info.pool_id
        self._index(current)
        current.links.append(link)
        for listener in self.listeners:
            listener(current, True)
        self._notify()
        return current

    def set_deployed(self, runner_id: str, replica_id: str, model: ModelInfo | None) -> bool:
        """A deployment replica on a runner here became ready (``model``) or stopped serving (None).

        Returns whether the runner is connected to this process.
        """
        runner = self.runners.get(runner_id)
        if runner is None:
            return False
        self._unindex(runner)
        old = runner.deployed.pop(replica_id, None)
        if old is not None:
            runner.models = [m for m in runner.models if m is not old]
        if model is not None:
            runner.deployed[replica_id] = model
            runner.models = [*runner.models, model]
        self._index(runner)
        self._notify()
        return True

    def detach(self, link: Link) -> None:
        runner = self.runners.get(link.runner_id)
        if runner is None:
            return
        if link in runner.links:
            runner.links.remove(link)
        if not runner.links:
            del self.runners[link.runner_id]
            self._unindex(runner)
            for listener in self.listeners:
                listener(runner, False)
        self._notify()

    def routable(self) -> list[ConnectedRunner]:
        """Runners a request may go to: this process's, then those only other replicas hold."""
        return [
            *self.runners.values(),
            *(r for k, r in self.remote.items() if k not in self.runners),
        ]

    def lookup(self, runner_id: str) -> ConnectedRunner | None:
        """A connected runner by id, held here or by another replica."""
        return self.runners.get(runner_id) or self.remote.get(runner_id)

    def candidates(self, model: str) -> list[ConnectedRunner]:
        return [r for r in self.runners_for(model) if r.usable_link() is not None]

    def runners_for(self, model: str) -> list[ConnectedRunner]:
        """Connected runners serving ``model`` (name or alias), usable or not (draining, saturated).

        This process's from the index, then those only other replicas hold, as in :meth:`routable`.
        """
        local = self._by_model.get(model)
        found: list[ConnectedRunner] = list(local.values()) if local else []
        if self.remote:
            found += [
                r for k, r in self.remote.items() if k not in self.runners and r.serves(model)
            ]
        return found

    def is_served(self, model: str) -> bool:
        """Whether some connected runner serves ``model``: ``model in model_names()`` without
        building it."""
        return model in self._by_model or any(
            r.serves(model) for k, r in self.remote.items() if k not in self.runners
        )

    async def wait_changed(self, timeout: float) -> None:
        """Wait until a runner connects or disconnects, or ``timeout`` passes."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            pass

    def model_names(self, pools: frozenset[str] | None = None) -> dict[str, ModelInfo]:
        """Every name and alias served; with ``pools``, only by runners in those pools (a
        tenant's view)."""
        names: dict[str, ModelInfo] = {}
        for r in self.routable():
            if pools is not None and r.pool_id not in pools:
                continue
            for m in r.models:
                names.setdefault(m.name, m)
                for alias in m.aliases:
                    names.setdefault(alias, m)
        return names

    async def disconnect(self, runner_id: str, code: CloseCode, reason: str) -> int:
        """Close every link of a runner (revocation). Returns how many were closed."""
        runner = self.runners.get(runner_id)
        if runner is None:
            return 0
        links = list(runner.links)
        for link in links:
            link.fail_all(reason)
            await link.close(int(code), reason)
        return len(links)

    async def goaway(self, reason: str) -> None:
        """Tell every runner this process is going away, so they re-dial elsewhere."""
        for runner in list(self.runners.values()):
            for link in list(runner.links):
                link.draining = True
                try:
                    await link.send(GoawayFrame(reason=reason, drain_s=0))
                except Exception as exc:  # noqa: BLE001 - the connection may already be gone
                    log.debug("goaway to %s not sent: %s", runner.runner_id, exc)

    def notify(self) -> None:
        """The set of routable runners changed elsewhere (control_plane/cluster): wake waiters."""
        self._notify()

    def _index(self, runner: ConnectedRunner[Link]) -> None:
        for m in runner.models:
            for name in (m.name, *m.aliases):
                self._by_model.setdefault(name, {})[runner.runner_id] = runner

    def _unindex(self, runner: ConnectedRunner[Link]) -> None:
        for m in runner.models:
            for name in (m.name, *m.aliases):
                served = self._by_model.get(name)
                if served is not None and served.get(runner.runner_id) is runner:
                    del served[runner.runner_id]
                    if not served:
                        del self._by_model[name]

    def _notify(self) -> None:
        # Wake waiters (tests, readiness) and re-arm.
        self.changed.set()
        self.changed = asyncio.Event()
