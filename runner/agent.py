"""The runner's lifecycle, read top to bottom: signals → startup → loops → shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console

from runner.e2e import RunnerE2E
from runner.engines.base import EngineAdapter, EngineLoad
from runner.identity import EnrollmentError, RunnerIdentity, enroll, load_identity
from runner.relay import EngineEndpoint, relay
from runner.settings import RunnerSettings
from runner.streams import OutboundStream
from runner.supervisor import Supervisor
from runner.tunnel import TunnelClient, TunnelTerminated
from sdk.e2e import Kem
from sdk.protocol import StatusFrame

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger("outpost.runner")


@dataclass
class AgentConfig:
    settings: RunnerSettings
    adapter: EngineAdapter
    hardware: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    engine_headers: dict[str, str] = field(default_factory=dict)


class Agent:
    def __init__(self, config: AgentConfig, console: Console | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.console = console or Console(stderr=True)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))
        self.supervisor = Supervisor(config.adapter, log_dir=self.settings.state_dir / "logs", http=self.http,
                                     health_timeout_s=self.settings.health_timeout_s)
        self.load = EngineLoad()
        self.tunnel: TunnelClient | None = None
        self.e2e: RunnerE2E | None = None
        self._e2e_publish: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            identity = await self._identity()
            self._start_e2e(identity)
            await self._start_engine()
            self.tunnel = self._make_tunnel(identity)
            return await self._serve(self.tunnel)
        except (EnrollmentError, TunnelTerminated) as exc:
            self.console.print(f"[red]runner stopped:[/] {exc}")
            return 2
        finally:
            if self._e2e_publish is not None:
                self._e2e_publish.cancel()
            await self.supervisor.stop()
            await self.http.aclose()

    async def _identity(self) -> RunnerIdentity:
        s = self.settings
        identity = load_identity(s.state_dir)
        if identity is not None and identity.control_plane.rstrip("/") == s.control_plane.rstrip("/"):
            return identity
        token = s.enrollment_token.get_secret_value() if s.enrollment_token else None
        if token is None and s.token_file is not None:
            token = s.token_file.read_text().strip()
        if not token:
            raise EnrollmentError("this runner is not enrolled: set OUTPOST_ENROLLMENT_TOKEN or pass "
                                  "--token-file (create one with `control-plane runners enroll NAME`)")
        identity = await enroll(s.control_plane, token, self.http)
        identity.save(s.state_dir)
        self.console.print(f"enrolled as runner [bold]{identity.runner_id}[/]")
        return identity

    def _start_e2e(self, identity: RunnerIdentity) -> None:
        # The HPKE key is made on first start (also for runners enrolled before e2e)
        # and its signed document uploaded while the engine loads.
        s = self.settings
        self.e2e = RunnerE2E.load(s.state_dir, identity, kem=Kem(s.e2e_kem), pad_to=s.e2e_pad_to)
        self._e2e_publish = asyncio.create_task(self.e2e.publish(self.http), name="e2e-key")
        self.console.print(f"identity fingerprint (pin this for end-to-end mode): {self.e2e.fingerprint}")

    async def _start_engine(self) -> None:
        adapter = self.config.adapter
        with self.console.status(f"starting {adapter.name}…") as status:
            await self.supervisor.start(progress=lambda msg: status.update(msg))
        self.console.print(f"[green]engine {adapter.name} ready[/] at {self.supervisor.base_url}")

    def _make_tunnel(self, identity: RunnerIdentity) -> TunnelClient:
        s = self.settings
        adapter = self.config.adapter
        endpoint = lambda: EngineEndpoint(
            base_url=self.supervisor.base_url, headers=self.config.engine_headers,
            upstream_names={m.name: m.name for m in adapter.models})

        async def on_stream(out: OutboundStream) -> None:
            await relay(out, endpoint(), self.http, sealed=self.e2e.relay if self.e2e else None)

        def hello_fields() -> dict[str, Any]:
            return {
                "models": [{"name": m.name, "engine": m.engine, "context_length": m.context_length,
                            "quantization": m.quantization, "aliases": list(m.aliases),
                            "endpoints": list(m.endpoints)} for m in adapter.models],
                "capacity": adapter.capacity, "hardware": self.config.hardware, "labels": s.labels,
                "cost": self.config.cost,
            }

        def status() -> StatusFrame:
            running = self.tunnel.active_streams if self.tunnel else 0
            return StatusFrame(running=max(running, self.load.running), waiting=self.load.waiting,
                               kv_cache_usage=self.load.kv_cache_usage,
                               healthy=self.supervisor.healthy.is_set(),
                               completed=self.tunnel.completed if self.tunnel else 0)

        return TunnelClient(identity=identity, hello_fields=hello_fields, on_stream=on_stream, status=status,
                            connections=s.connections, ping_interval_s=s.ping_interval_s,
                            ping_timeout_s=s.ping_timeout_s)

    async def _serve(self, tunnel: TunnelClient) -> int:
        tasks = [asyncio.create_task(tunnel.run(), name="tunnel"),
                 asyncio.create_task(self.supervisor.watch(), name="supervisor"),
                 asyncio.create_task(self._poll_metrics(), name="metrics")]
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        self.console.print(f"[green]serving[/] through {tunnel.url} ({self.settings.connections} connections)")
        done, _ = await asyncio.wait([stop, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if tasks[0] in done and tasks[0].exception() is not None:
            exc = tasks[0].exception()
            inner = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
            if isinstance(inner, TunnelTerminated):
                self.console.print(f"[red]runner stopped:[/] {inner}")
                code = 2
            else:
                raise inner
        else:
            self.console.print("shutting down: draining live streams…")
            await tunnel.drain(self.settings.drain_s)
        for t in [*tasks, stop]:
            t.cancel()
        await asyncio.gather(*tasks, stop, return_exceptions=True)
        return code

    async def _poll_metrics(self) -> None:
        adapter = self.config.adapter
        while True:
            await asyncio.sleep(2.0)
            if not self.supervisor.healthy.is_set():
                continue
            try:
                resp = await self.http.get(self.supervisor.base_url + "/metrics", timeout=2.0,
                                           headers=self.config.engine_headers)
                self.load = adapter.parse_metrics(resp.text if resp.status_code == 200 else "")
            except (httpx.HTTPError, ValueError):
                self.load = EngineLoad()
