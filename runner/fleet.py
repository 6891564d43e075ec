"""The engines of one runner: one supervised engine process per model, routed by model name.

Each engine has its own :class:`Supervisor` (own port, own log, own restart
backoff), so one engine's crash leaves the others serving; the runner then
reports that engine's models as unavailable and answers their requests 503
before the first byte, which the control plane fails over.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from outpost.runner.engine_process import EngineRegistry
from outpost.runner.engines.base import EngineAdapter, EngineLoad
from outpost.runner.relay import EngineEndpoint
from outpost.runner.supervisor import EngineFailed, HealthCheck, HealthProbe, Supervisor
from outpost.sdk.protocol import EngineSlots

__all__ = ["EngineFleet", "FleetEngine"]

log = logging.getLogger("outpost.runner.fleet")


@dataclass
class FleetEngine:
    """One engine of the fleet: its adapter, supervisor and last-read load."""

    adapter: EngineAdapter
    supervisor: Supervisor
    headers: dict[str, str] = field(default_factory=dict)
    load: EngineLoad = field(default_factory=EngineLoad)
    streams: int = 0  # requests relayed to this engine since start
    active: int = 0  # requests being relayed to it now (a draining replica waits for 0)
    # Set for an engine started by a deployment (runner/deployments/), None for the
    # runner's own models (static deployments).
    replica_id: str | None = None
    deployment_id: str | None = None
    generation: int = 0
    draining: bool = False
    # A replica served under a runner-side name (deploy.v1 ``served_name``): the public name its
    # answers and status carry. None: its models' own names.
    reply_name: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every public name and alias this engine answers to."""
        return tuple(n for m in self.adapter.models for n in (m.name, *m.aliases))

    @property
    def status_names(self) -> list[str]:
        """Its models' names for status.v1, and the public name of a replica served under a
        runner-side one: the control plane looks a model up by either."""
        names = [m.name for m in self.adapter.models]
        return [*names, self.reply_name] if self.reply_name else names

    @property
    def label(self) -> str:
        """The engine's first public model name, for logs and progress."""
        return self.adapter.models[0].name if self.adapter.models else self.adapter.name

    @property
    def healthy(self) -> bool:
        return self.supervisor.healthy.is_set()

    def endpoint(self) -> EngineEndpoint:
        # Every engine is asked for the public model name (an attached one's names are its own):
        # no name map, so the relay sends the body's model as it is.
        return EngineEndpoint(
            base_url=self.supervisor.base_url,
            headers=self.headers,
            rewrite=getattr(self.adapter, "rewrite_request", None),
            reply_name=self.reply_name,
        )


def _log_name(label: str) -> str:
    return "engine-" + re.sub(r"[^A-Za-z0-9._-]+", "_", label) + ".log"


class EngineFleet:
    def __init__(
        self,
        adapters: list[EngineAdapter],
        *,
        log_dir: Path,
        http: httpx.AsyncClient,
        headers: list[dict[str, str]] | None = None,
        health_timeout_s: float = 300.0,
        health_check: HealthCheck | None = None,
        probe: HealthProbe | None = None,
        registry: EngineRegistry | None = None,
    ) -> None:
        if not adapters:
            raise ValueError("a runner needs at least one engine")
        self.http = http
        self.engines: list[FleetEngine] = []
        for i, adapter in enumerate(adapters):
            label = adapter.models[0].name if adapter.models else adapter.name
            # One engine keeps the historical logs/engine.log; several get one file each.
            name = "engine.log" if len(adapters) == 1 else _log_name(label)
            sup = Supervisor(
                adapter,
                log_dir=log_dir,
                log_name=name,
                http=http,
                health_timeout_s=health_timeout_s,
                health_check=health_check,
                probe=probe,
                registry=registry,
            )
            self.engines.append(FleetEngine(adapter, sup, (headers or [{}] * len(adapters))[i]))
        # Kept for the engines that deployments start later (EngineFleet.add).
        self._log_dir = log_dir
        self._health_timeout_s = health_timeout_s
        self._health_check = health_check
        self._probe = probe
        self._registry = registry
        self._retired: set[str] = set()
        self._by_name: dict[str, FleetEngine] = {}
        for engine in self.engines:
            for m in engine.adapter.models:
                for n in (m.name, *m.aliases):
                    self._by_name.setdefault(n, engine)

    # --- lifecycle ------------------------------------------------------------

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start every engine at once and wait until all are healthy; on any failure stop all."""
        states = {e.label: "starting" for e in self.engines}

        def report(label: str) -> Callable[[str], None]:
            def update(msg: str) -> None:
                states[label] = msg
                if progress:
                    progress("; ".join(f"{k}: {v}" for k, v in states.items()))

            return update

        results = await asyncio.gather(
            *(e.supervisor.start(progress=report(e.label)) for e in self.engines),
            return_exceptions=True,
        )
        failed = [
            (e, r)
            for e, r in zip(self.engines, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            await self.stop()
            first_engine, exc = failed[0]
            if not isinstance(exc, EngineFailed | OSError):
                raise exc
            raise EngineFailed(f"the engine for {first_engine.label} did not start: {exc}") from exc

    async def watch(self) -> None:
        """Restart each engine on its own when it dies or hangs (bounded backoff, see
        Supervisor.watch)."""
        # A deployment's engine is watched by its replica (runner/deployments/manager.py).
        await asyncio.gather(*(e.supervisor.watch() for e in self.static))

    async def stop(self) -> None:
        await asyncio.gather(*(e.supervisor.stop() for e in self.engines))

    @property
    def static(self) -> list[FleetEngine]:
        """The engines of the models the runner was started with."""
        return [e for e in self.engines if e.replica_id is None]

    async def add(
        self,
        adapter: EngineAdapter,
        *,
        replica_id: str,
        deployment_id: str,
        generation: int,
        reply_name: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> FleetEngine:
        """Start a deployment's engine; once healthy it joins routing and status. Cancelling
        or a failed start stops the process again."""
        sup = Supervisor(
            adapter,
            log_dir=self._log_dir,
            log_name=_log_name("replica-" + replica_id),
            http=self.http,
            health_timeout_s=self._health_timeout_s,
            health_check=self._health_check,
            probe=self._probe,
            registry=self._registry,
        )
        try:
            await sup.start(progress=progress)
        except BaseException:
            await sup.stop()
            raise
        engine = FleetEngine(adapter, sup, replica_id=replica_id, deployment_id=deployment_id,
                             generation=generation, reply_name=reply_name)  # fmt: skip
        self.engines.append(engine)
        self._retired.difference_update(engine.names)
        return engine

    async def remove(self, engine: FleetEngine, grace_s: float = 10.0) -> None:
        """Take a deployment's engine out of routing, then stop its process."""
        if engine in self.engines:
            self.engines.remove(engine)
        # A late request for a name nothing serves any more gets a 404, not the lone engine.
        self._retired.update(n for n in engine.names if not any(n in e.names for e in self.engines))
        await engine.supervisor.stop(grace_s)

    # --- routing and status ---------------------------------------------------------

    def route(self, model: str) -> FleetEngine | None:
        """The engine serving ``model`` (a public name or alias). A lone engine of the runner's
        own takes every request no other engine names, as before several models were possible
        (the control plane routes by name)."""
        if (engine := self._by_name.get(model)) is not None:
            return engine
        # A deployment's replicas: the newest healthy one that is not draining first (a rolling
        # update's new generation takes over from the old one on this runner).
        replicas = [e for e in reversed(self.engines) if e.replica_id and model in e.names]
        if replicas:
            return min(replicas, key=lambda e: (e.draining, not e.healthy))
        static = self.static
        return static[0] if len(static) == 1 and model not in self._retired else None

    @property
    def healthy(self) -> bool:
        """The runner can serve something: at least one engine is up."""
        return any(e.healthy for e in self.engines)

    def slots(self) -> list[EngineSlots]:
        """Each engine's models and slots, for status.v1 ``engines`` (docs/protocol.md "Engine
        slots").

        With several engines the control plane then admits per engine, not up to the
        runner-wide sum; a lone engine sends none (its slots are the hello's capacity).
        """
        if len(self.engines) == 1:
            return []
        return [
            EngineSlots(
                models=e.status_names,
                capacity=max(e.adapter.capacity - e.adapter.headroom, 1),
                headroom=e.adapter.headroom,
            )
            for e in self.engines
            if e.adapter.models
        ]

    def unavailable_models(self) -> list[str]:
        """Public names of the models whose engine is down (restarting, loading, or hung and
        being killed)."""
        return [n for e in self.engines if not e.healthy for n in e.status_names]

    @property
    def load(self) -> EngineLoad:
        loads = [e.load for e in self.engines]
        kv = [ld.kv_cache_usage for ld in loads if ld.kv_cache_usage is not None]
        # The fullest KV cache is the one that queues first.
        return EngineLoad(
            running=sum(ld.running for ld in loads),
            waiting=sum(ld.waiting for ld in loads),
            kv_cache_usage=max(kv) if kv else None,
        )

    async def poll_metrics(self) -> None:
        for e in self.engines:
            if not e.healthy:
                e.load = EngineLoad()
                continue
            try:
                resp = await self.http.get(
                    e.supervisor.base_url + "/metrics", timeout=2.0, headers=e.headers
                )
                e.load = e.adapter.parse_metrics(resp.text if resp.status_code == 200 else "")
            except (httpx.HTTPError, ValueError):
                e.load = EngineLoad()
