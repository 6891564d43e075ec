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
        return EngineEndpoint(base_url=self.supervisor.base_url, headers=self.headers)


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
        await asyncio.gather(*(e.supervisor.watch() for e in self.engines))

    async def stop(self) -> None:
        await asyncio.gather(*(e.supervisor.stop() for e in self.engines))

    # --- routing and status ---------------------------------------------------------

    def route(self, model: str) -> FleetEngine | None:
        """The engine serving ``model`` (a public name or alias). A lone engine takes every
        request, as before several models were possible (the control plane routes by name)."""
        if len(self.engines) == 1:
            return self.engines[0]
        return self._by_name.get(model)

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
                models=[m.name for m in e.adapter.models],
                capacity=max(e.adapter.capacity - e.adapter.headroom, 1),
                headroom=e.adapter.headroom,
            )
            for e in self.engines
            if e.adapter.models
        ]

    def unavailable_models(self) -> list[str]:
        """Public names of the models whose engine is down (restarting, loading, or hung and
        being killed)."""
        return [m.name for e in self.engines if not e.healthy for m in e.adapter.models]

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
