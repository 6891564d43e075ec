"""The runner's side of deployments: deploy.v1 → fetch, plan, start → replica.v1.

One task per replica walks ``pending → downloading → loading → ready`` (or
``failed`` with the reason, at any step); ``undeploy.v1`` walks ``draining →
stopped``. The engine runs under the fleet's supervisor like the runner's own
models, so a crash is restarted and reported in status frames the same way.
Nothing here trusts the control plane further than the frame's bounds: the
model path stays under the model directory, URLs need a checksum, options
come from an allow-list, and the planner refuses what does not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from rich.console import Console

from outpost.runner.deployments.planner import (
    OptionError,
    engine_for,
    overrides_from,
    plan_replica,
)
from outpost.runner.deployments.reporter import Replica, Reporter, Sender
from outpost.runner.deployments.sources import (
    FetchPolicy,
    SourceError,
    fetch_hf,
    fetch_url,
    resolve_path,
)
from outpost.runner.engines import PlanRefusedError, build_engine, served_models
from outpost.runner.engines.base import ServedModel
from outpost.runner.fleet import EngineFleet, FleetEngine
from outpost.runner.gguf_meta import ModelNotFoundError, ModelSpec, resolve_model
from outpost.runner.hardware import HardwareReport, detect
from outpost.runner.planning import Overrides, Plan
from outpost.runner.supervisor import EngineFailed
from outpost.sdk.protocol import (
    DeployFrame,
    HfSource,
    ModelInfo,
    PathSource,
    ReplicaFrame,
    UndeployFrame,
)

__all__ = ["DeploymentManager"]

log = logging.getLogger("outpost.runner.deployments")

#: What a failed replica's reason is made of: the runner's own refusals and the
#: errors of a download, a model file or an engine start. Anything else is a bug,
#: logged with its traceback and reported by type only.
_EXPECTED = (
    SourceError,
    OptionError,
    PlanRefusedError,
    EngineFailed,
    ModelNotFoundError,
    OSError,
    ValueError,
)


class DeploymentManager:
    def __init__(
        self,
        fleet: EngineFleet,
        policy: FetchPolicy,
        *,
        hardware: HardwareReport | None = None,
        static_plans: list[Plan] | None = None,
        max_replicas: int = 8,
        store: Path | None = None,
        console: Console | None = None,
        installed: frozenset[str] | None = None,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.hardware = hardware
        self.static_plans = list(static_plans or [])
        self.max_replicas = max_replicas
        self.installed = installed
        # The orders of the replicas this runner holds, so a restarted runner brings them back
        # (the control plane keeps a replica through a short absence and would not re-place it).
        self.store = store
        self.replicas: dict[str, Replica] = {}
        self._plans: dict[str, Plan] = {}  # memory held by each replica past planning
        self._engines: dict[str, FleetEngine] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()  # reports and undeploys
        self._send: Sender = _nowhere
        self.reporter = Reporter(self._relay, console or Console(stderr=True))
        # Downloads honour HTTPS_PROXY/NO_PROXY: a mirror may sit behind the site's proxy.
        self.http = httpx.AsyncClient(trust_env=True)

    # --- the tunnel's side ------------------------------------------------------

    def attach(self, send: Sender) -> None:
        """Where replica frames go (TunnelClient.send_control)."""
        self._send = send

    async def _relay(self, frame: ReplicaFrame) -> bool:
        return await self._send(frame)

    def handle(self, frame: object, send: Callable[[object], Awaitable[None]]) -> None:
        """A control frame from the tunnel's reader; returns at once (work runs in tasks)."""
        if isinstance(frame, DeployFrame):
            self.deploy(frame)
        elif isinstance(frame, UndeployFrame):
            self._spawn(f"undeploy {frame.replica_id}", self.undeploy(frame))

    def restore(self) -> int:
        """Deploy again what the runner held when it stopped; returns how many orders."""
        if self.store is None or not self.store.is_file():
            return 0
        try:
            saved = json.loads(self.store.read_text())
            orders = [DeployFrame.model_validate(o) for o in saved]
        except (OSError, ValueError) as exc:  # a torn or edited file: start empty, say so
            log.warning("cannot read %s (%s); no replica restored", self.store, exc)
            return 0
        for order in orders[: self.max_replicas]:
            self.deploy(order)
        return len(orders[: self.max_replicas])

    def _save(self) -> None:
        if self.store is None:
            return
        held = [
            r.order.model_dump(mode="json")
            for r in self.replicas.values()
            if r.state not in ("failed", "stopped")
        ]
        tmp = self.store.with_suffix(".tmp")
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(held, f)
            os.replace(tmp, self.store)
        except OSError as exc:  # the replicas still run; only a restart forgets them
            log.warning("cannot save the replicas to %s: %s", self.store, exc)

    async def resync(self) -> None:
        """Every replica's latest state, for a control plane that just (re)connected."""
        for replica in list(self.replicas.values()):
            await self.reporter.send(replica)

    # --- deploy -------------------------------------------------------------------

    def deploy(self, order: DeployFrame) -> None:
        rid = order.replica_id
        if (known := self.replicas.get(rid)) is not None:
            # The control plane repeats an order it has no answer to (a reconnect): answer
            # with where the replica stands; a different order under a live id is refused.
            if known.order != order:
                log.warning("deploy.v1 for replica %s differs from the one it runs", rid)
            self._spawn(f"report {rid}", self.reporter.send(known))
            return
        replica = Replica(order)
        self._forget_finished()
        self.replicas[rid] = replica
        live = sum(1 for r in self.replicas.values() if r.state not in ("failed", "stopped"))
        if live > self.max_replicas:
            replica.state = "failed"  # at once: the next order counts it out
            self._spawn(
                f"refuse {rid}",
                self.reporter.state(
                    replica,
                    "failed",
                    f"this runner holds {self.max_replicas} replicas, its limit "
                    "(--max-deployments)",
                ),
            )
            return
        self._save()
        self._tasks[rid] = asyncio.create_task(self._run(replica), name=f"replica {rid}")

    def _forget_finished(self) -> None:
        """Keep a bounded record: failed replicas the control plane never undeploys go first."""
        finished = [rid for rid, r in self.replicas.items() if r.state in ("failed", "stopped")]
        for rid in finished[: max(0, len(self.replicas) - 4 * self.max_replicas + 1)]:
            self.replicas.pop(rid, None)

    async def _run(self, replica: Replica) -> None:
        rid = replica.replica_id
        try:
            await self.reporter.state(replica, "pending")
            self._check_names(replica.order)
            overrides = overrides_from(replica.order.engine_options)
            engine = engine_for(replica.order.engine, self.installed)
            path = await self._fetch(replica)
            spec = await asyncio.to_thread(resolve_model, path)
            # Planned, refused and served under its public name, not the file's.
            spec = spec.model_copy(update={"name": replica.order.name})
            decision = self._plan(replica, spec, engine, overrides)
            await self.reporter.state(replica, "loading")
            adapter = build_engine(decision, self._served(replica.order, decision))
            self._check_names(replica.order)  # again: another replica may have come meanwhile
            started = await self.fleet.add(
                adapter,
                replica_id=rid,
                deployment_id=replica.order.deployment_id,
                generation=replica.order.generation,
                # Answers say the public name, whatever name the request carried here.
                reply_name=replica.order.name if replica.order.served_name else None,
            )
            self._engines[rid] = started
            self._watches[rid] = asyncio.create_task(started.supervisor.watch())
            replica.model = _model_info(adapter.models[0])
            await self.reporter.state(replica, "ready")
        except asyncio.CancelledError:
            raise
        except _EXPECTED as exc:
            self._plans.pop(rid, None)
            await self.reporter.state(replica, "failed", str(exc) or type(exc).__name__)
            self._save()
        except Exception as exc:
            self._plans.pop(rid, None)
            log.exception("replica %s failed", rid)
            await self.reporter.state(replica, "failed", f"runner error: {type(exc).__name__}")
            self._save()
        finally:
            self._tasks.pop(rid, None)

    def _check_names(self, order: DeployFrame) -> None:
        """A public name routes to one model on a runner: a replica may share its names only
        with replicas of its own deployment (a rolling update's old generation)."""
        wanted = _names(order)
        for engine in self.fleet.engines:
            if engine.deployment_id == order.deployment_id:
                continue
            if clash := wanted.intersection(engine.names):
                owner = (
                    "a model this runner was started with"
                    if engine.replica_id is None
                    else f"replica {engine.replica_id}"
                )
                raise OptionError(f"{', '.join(sorted(clash))} is already served here by {owner}")

    async def _fetch(self, replica: Replica) -> Path:
        source = replica.order.source
        if isinstance(source, PathSource):
            return resolve_path(self.policy, source)
        await self.reporter.state(replica, "downloading")
        ticker = asyncio.create_task(self._tick(replica))
        try:
            if isinstance(source, HfSource):
                return await fetch_hf(source, replica.on_bytes)
            return await fetch_url(self.policy, source, replica.on_bytes, self.http)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _tick(self, replica: Replica) -> None:
        # Progress is sampled here, not pushed by the download: a hub download runs in a thread.
        while True:
            await asyncio.sleep(0.25)
            await self.reporter.progress(replica)

    def _plan(
        self, replica: Replica, spec: ModelSpec, engine: str | None, overrides: Overrides
    ) -> Plan:
        if self.hardware is None:
            self.hardware = detect()
        held = [*self.static_plans, *self._plans.values()]
        decision = plan_replica(self.hardware, held, spec, engine, overrides, self.installed)
        if decision.refusal:
            raise PlanRefusedError(decision.refusal)
        # Held from now on, so a second deploy arriving meanwhile is planned beside this one.
        self._plans[replica.replica_id] = decision
        return decision

    @staticmethod
    def _served(order: DeployFrame, decision: Plan) -> tuple[ServedModel, ...]:
        planned = served_models(decision)
        if order.served_name is not None:  # one runner-side name, unique here (A/B)
            first = dataclasses.replace(planned[0], name=order.served_name, aliases=())
        else:
            first = dataclasses.replace(planned[0], name=order.name, aliases=tuple(order.aliases))
        return (first, *planned[1:])

    # --- undeploy ------------------------------------------------------------------

    async def undeploy(self, order: UndeployFrame) -> None:
        rid = order.replica_id
        replica = self.replicas.get(rid)
        if replica is None:
            # Nothing here by that id (already stopped, or never placed): say so, and the
            # control plane's record converges.
            await self._send(
                ReplicaFrame(replica_id=rid, state="stopped", reason="not on this runner")
            )
            return
        task = self._tasks.pop(rid, None)
        if task is not None:  # still downloading or loading: no stream uses it yet
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        engine = self._engines.pop(rid, None)
        if engine is not None:
            engine.draining = True
            await self.reporter.state(replica, "draining")
            await self._drain(engine, order.drain_s)
            if (watch := self._watches.pop(rid, None)) is not None:
                watch.cancel()
            await self.fleet.remove(engine)
        self._plans.pop(rid, None)
        replica.model = None
        await self.reporter.state(replica, "stopped")
        self.replicas.pop(rid, None)
        self._save()

    @staticmethod
    async def _drain(engine: FleetEngine, drain_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while engine.active and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if engine.active:
            log.warning(
                "replica %s: %d stream(s) still open after %.0fs; stopping its engine",
                engine.replica_id,
                engine.active,
                drain_s,
            )

    # --- lifecycle -------------------------------------------------------------------

    def _spawn(self, name: str, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", name)

        task = asyncio.create_task(run(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Cancel every download and load; the fleet stops the engines that run."""
        tasks = [*self._tasks.values(), *self._watches.values(), *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.reporter.console.close()
        with contextlib.suppress(Exception):
            await self.http.aclose()


def _names(order: DeployFrame) -> set[str]:
    """The names requests for the replica carry on this runner."""
    return {order.served_name} if order.served_name else {order.name, *order.aliases}


async def _nowhere(frame: ReplicaFrame) -> bool:
    return False


def _model_info(m: ServedModel) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        engine=m.engine,
        context_length=m.context_length,
        quantization=m.quantization,
        aliases=list(m.aliases),
        endpoints=list(m.endpoints),
    )
