"""The runner's lifecycle, read top to bottom: signals → startup → loops → shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console

from outpost.runner.deployments.manager import DeploymentManager
from outpost.runner.deployments.sources import FetchPolicy
from outpost.runner.e2e import RunnerE2E
from outpost.runner.engine_client import AiohttpEngineClient
from outpost.runner.engine_process import EngineRegistry
from outpost.runner.engines.base import EngineAdapter
from outpost.runner.fleet import EngineFleet
from outpost.runner.identity import (
    EnrollmentError,
    RunnerIdentity,
    enroll,
    load_identity,
    split_token,
)
from outpost.runner.planning import Plan
from outpost.runner.relay import relay
from outpost.runner.settings import RunnerSettings
from outpost.runner.streams import OutboundStream
from outpost.runner.supervisor import HealthCheck
from outpost.runner.tls import ControlPlaneTransport, TrustFailure, pinned_context
from outpost.runner.tunnel import StreamObserver, TunnelClient, TunnelTerminated
from outpost.sdk.e2e import Kem
from outpost.sdk.errors import error_json
from outpost.sdk.hardware import HardwareReport
from outpost.sdk.pricing import CostModel
from outpost.sdk.protocol import CAPABILITIES, StatusFrame

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger("outpost.runner")


@dataclass
class AgentConfig:
    settings: RunnerSettings
    #: One engine per served model (an attached engine: one for all its models).
    adapters: list[EngineAdapter]
    hardware: HardwareReport | None = None
    cost: CostModel = field(default_factory=CostModel)
    engine_headers: dict[str, str] = field(default_factory=dict)
    #: The plans of ``adapters``: deployments are planned in the memory they leave.
    plans: list[Plan] = field(default_factory=list)


class Agent:
    def __init__(self, config: AgentConfig, console: Console | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self.console = console or Console(stderr=True)
        # httpx for the control plane, health probes and metrics; the relayed requests take the
        # leaner engine client (docs/performance.md, "the runner's engine hop"). Not the control
        # plane's: proxies from the environment are for that one (runner/tls.py), and an engine on
        # loopback must not be sent through a corporate proxy.
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64), trust_env=False
        )
        self.engine_client = AiohttpEngineClient(limit=512)
        # Engines left by a previous run were stopped before planning (runner/launch.py).
        self.engine_registry = EngineRegistry(self.settings.state_dir / "engines")
        self.fleet = EngineFleet(
            config.adapters,
            log_dir=self.settings.state_dir / "logs",
            http=self.http,
            headers=[config.engine_headers] * len(config.adapters),
            health_timeout_s=self.settings.health_timeout_s,
            health_check=HealthCheck(
                self.settings.health_check_interval_s,
                self.settings.health_check_timeout_s,
                self.settings.health_check_failures,
            ),
            registry=self.engine_registry,
        )
        #: Deployments the control plane orders (docs/deployments.md); None with --no-deployments.
        self.deployments: DeploymentManager | None = None
        if self.settings.deployments:
            self.deployments = DeploymentManager(
                self.fleet,
                FetchPolicy(self.settings.models_dir, frozenset(self.settings.deploy_http_hosts)),
                hardware=config.hardware,
                static_plans=config.plans,
                max_replicas=self.settings.max_deployments,
                console=self.console,
                store=self.settings.state_dir / "deployments.json",
            )
        self.tunnel: TunnelClient | None = None
        #: The control plane's own client: its CA, client certificate, pins and proxy
        #: (runner/tls.py).
        self.cp_http: httpx.AsyncClient | None = None
        self.transport: ControlPlaneTransport | None = None
        self.e2e: RunnerE2E | None = None
        self._e2e_publish: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.observer: StreamObserver | None = None  # runner/observability.py, with --metrics-port

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            identity = await self._identity()
            self._start_e2e(identity)
            await self._start_engine()
            if self.deployments is not None:
                self.settings.models_dir.mkdir(parents=True, exist_ok=True)
                self.console.print(
                    f"deployments: on (models by path under {self.settings.models_dir})",
                    highlight=False,
                )
                if restored := self.deployments.restore():
                    self.console.print(f"deployments: restoring {restored} replica(s)")
            self.tunnel = self._make_tunnel(identity)
            return await self._serve(self.tunnel)
        except (EnrollmentError, TunnelTerminated, TrustFailure) as exc:
            self.console.print(f"[red]runner stopped:[/] {exc}")
            return 2
        finally:
            if self._e2e_publish is not None:
                self._e2e_publish.cancel()
            if self.deployments is not None:
                await self.deployments.stop()
            await self.fleet.stop()
            await self.engine_client.aclose()
            await self.http.aclose()
            if self.cp_http is not None:
                await self.cp_http.aclose()

    async def _identity(self) -> RunnerIdentity:
        s = self.settings
        identity = load_identity(s.state_dir)
        if identity is not None and identity.control_plane.rstrip("/") == s.control_plane.rstrip(
            "/"
        ):
            self._connect_with(identity.pins)
            return identity
        token = s.enrollment_token.get_secret_value() if s.enrollment_token else None
        if token is None and s.token_file is not None:
            token = s.token_file.read_text().strip()
        if not token:
            raise EnrollmentError(
                "this runner is not enrolled: set OUTPOST_ENROLLMENT_TOKEN or pass "
                "--token-file (create one with `control-plane runners enroll NAME`)"
            )
        _, token_pin = split_token(token)
        pins = (token_pin,) if token_pin else ()
        assert self.cp_http is None
        identity = await enroll(s.control_plane, token, self._connect_with(pins), pins=pins)
        identity.save(s.state_dir)
        self.console.print(f"enrolled as runner [bold]{identity.runner_id}[/]")
        return identity

    def _connect_with(self, enrolled_pins: tuple[str, ...]) -> httpx.AsyncClient:
        """Build the one TLS/proxy configuration every control-plane connection uses."""
        s = self.settings
        # An explicit --pin-sha256 replaces the enrolled pin: that is how a key is rotated.
        pins = tuple(s.pin_sha256) or enrolled_pins
        auth = s.proxy_auth.get_secret_value() if s.proxy_auth else None
        try:
            ctx = pinned_context(s.ca_bundle, s.client_cert, s.client_key, pins)
            proxy = ControlPlaneTransport.proxy_setting(s.proxy, auth)
        except (
            ValueError,
            OSError,
        ) as exc:  # an unreadable CA bundle or key, a malformed proxy URL
            raise TrustFailure(f"cannot set up TLS or the proxy: {exc}") from None
        self.transport = ControlPlaneTransport(ssl=ctx, proxy=proxy)
        # httpx_kwargs() is shared with other clients, so its values are typed ``object``.
        self.cp_http = httpx.AsyncClient(**self.transport.httpx_kwargs())  # type: ignore[arg-type]
        return self.cp_http

    def _start_e2e(self, identity: RunnerIdentity) -> None:
        # The HPKE key is made on first start (also for runners enrolled before e2e)
        # and its signed document uploaded while the engine loads.
        s = self.settings
        self.e2e = RunnerE2E.load(s.state_dir, identity, kem=Kem(s.e2e_kem), pad_to=s.e2e_pad_to)
        assert self.cp_http is not None
        self._e2e_publish = asyncio.create_task(self.e2e.publish(self.cp_http), name="e2e-key")
        self.console.print(
            f"identity fingerprint (pin this for end-to-end mode): {self.e2e.fingerprint}"
        )

    async def _start_engine(self) -> None:
        names = ", ".join(e.adapter.name for e in self.fleet.engines)
        with self.console.status(f"starting {names}…") as status:
            await self.fleet.start(progress=lambda msg: status.update(msg))
        for e in self.fleet.engines:
            self.console.print(
                f"[green]engine {e.adapter.name} ready[/] for {e.label} at {e.supervisor.base_url}",
                highlight=False,
                soft_wrap=True,
            )

    def _make_tunnel(self, identity: RunnerIdentity) -> TunnelClient:
        s = self.settings
        fleet = self.fleet

        async def on_stream(out: OutboundStream) -> None:
            engine = fleet.route(out.request.model)
            if engine is None or not engine.healthy:
                await _refuse(out, engine is None)
                return
            engine.streams += 1
            engine.active += 1  # a draining replica's engine stops once this is back to 0
            try:
                await relay(
                    out,
                    engine.endpoint(),
                    self.engine_client,
                    sealed=self.e2e.relay if self.e2e else None,
                )
            finally:
                engine.active -= 1

        def hello_fields() -> dict[str, Any]:
            # The runner's own models only: a deployment's replica is announced in replica.v1
            # (re-sent on every connection), not as a model the runner was started with.
            adapters = [e.adapter for e in fleet.static]
            return {
                "models": [
                    {
                        "name": m.name,
                        "engine": m.engine,
                        "context_length": m.context_length,
                        "quantization": m.quantization,
                        "aliases": list(m.aliases),
                        "endpoints": list(m.endpoints),
                    }
                    for a in adapters
                    for m in a.models
                ],
                # One runner-wide admission count: the engines' slots together, less
                # their fair headroom (sent in status frames to a control plane that knows it).
                "capacity": sum(a.capacity - a.headroom for a in adapters),
                "hardware": self.config.hardware,
                "labels": s.labels,
                "cost": self.config.cost,
            }

        def status() -> StatusFrame:
            running = self.tunnel.active_streams if self.tunnel else 0
            load = fleet.load
            return StatusFrame(
                running=max(running, load.running),
                waiting=load.waiting,
                kv_cache_usage=load.kv_cache_usage,
                healthy=fleet.healthy,
                unavailable_models=fleet.unavailable_models(),
                headroom=sum(e.adapter.headroom for e in fleet.engines),
                engines=fleet.slots(),
                completed=self.tunnel.completed if self.tunnel else 0,
            )

        manager = self.deployments
        tunnel = TunnelClient(
            identity=identity,
            hello_fields=hello_fields,
            on_stream=on_stream,
            status=status,
            connections=s.connections,
            ping_interval_s=s.ping_interval_s,
            ping_timeout_s=s.ping_timeout_s,
            observer=self.observer,
            transport=self.transport,
            capabilities=CAPABILITIES
            if manager
            else CAPABILITIES - {"deployments", "served-names"},
            on_control=manager.handle if manager else None,
            on_session=manager.resync if manager else None,
        )
        if manager is not None:
            manager.attach(tunnel.send_control)
        return tunnel

    async def _serve(self, tunnel: TunnelClient) -> int:
        tasks = [
            asyncio.create_task(tunnel.run(), name="tunnel"),
            asyncio.create_task(self.fleet.watch(), name="supervisor"),
            asyncio.create_task(self._poll_metrics(), name="metrics"),
        ]
        stop = asyncio.create_task(self._stop.wait(), name="stop")
        self.console.print(
            f"[green]serving[/] through {tunnel.url} ({self.settings.connections} connections)"
        )
        done, _ = await asyncio.wait([stop, tasks[0]], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        exc = tasks[0].exception() if tasks[0] in done else None
        if exc is not None:
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
        while True:
            await asyncio.sleep(2.0)
            await self.fleet.poll_metrics()


async def _refuse(out: OutboundStream, unknown: bool) -> None:
    """Answer a request no engine can take, before the first byte."""
    model = out.request.model
    if unknown:
        await out.start(404, "application/json")
        await out.data(
            error_json(
                f"this runner does not serve {model!r}", "invalid_request_error", "model_not_found"
            )
        )
        await out.end()
        return
    # A 5xx start with an error end and no data: the control plane fails it over.
    await out.start(503, "application/json")
    await out.end(error=f"the engine for {model!r} is restarting")
