"""The reconciler: makes each deployment's replicas match what it asks for (docs/deployments.md).

One task per control-plane process compares, every few seconds and at once
after a change, each deployment with its replica rows, and sends ``deploy.v1``
or ``undeploy.v1`` to runners this process holds. A second task applies the
runners' ``replica.v1`` reports, in order, to the rows and to the hub's index
of names, so a replica takes requests only once its runner says it is ready,
and only under the deployment's own name and aliases: whatever name a runner
claims, it cannot serve one it was not told to (a mismatch fails the replica).

Rows are written before the frame goes out, so a report always finds its row;
a report for an unknown replica (one forgotten when its runner was lost) is
answered with ``undeploy.v1``, so nothing runs that the control plane does not
know of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Deployment, DeploymentReplica, new_id, utcnow
from outpost.control_plane.deployments.placement import pick_runners, runner_fits
from outpost.control_plane.deployments.scaling import ScalingMixin
from outpost.control_plane.deployments.traffic import TrafficMixin
from outpost.control_plane.store.deployments import (
    get_deployment,
    get_replica,
    list_live_deployments,
    replicas_by_deployment,
)
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import Link
from outpost.sdk.protocol import DeployFrame, ModelInfo, ReplicaFrame, UndeployFrame

__all__ = ["Reconciler"]

log = logging.getLogger("outpost.deployments")

#: Reports waiting to be applied; beyond this a flood is dropped (the runner reports again).
MAX_PENDING_REPORTS = 10_000
_GONE = ("draining", "stopped")
#: Progress reports of one replica in one state kept at most this often.
PROGRESS_EVERY_S = 0.25

Send = tuple[str, DeployFrame | UndeployFrame]


@dataclass
class _Pass:
    """What one reconcile pass decided: frames to send once its rows are committed."""

    sends: list[Send] = field(default_factory=list)
    # Runner id -> replicas on it (all deployments), to spread new replicas.
    load: dict[str, int] = field(default_factory=dict)
    # Runner id -> (public name, deployment id) of its replicas: one name per runner.
    names: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    unroute: list[tuple[str, str]] = field(default_factory=list)


class Reconciler(ScalingMixin, TrafficMixin):
    def __init__(
        self,
        db: Database,
        hub: TunnelHub,
        *,
        interval_s: float = 2.0,
        drain_s: float = 30.0,
        runner_grace_s: float = 15.0,
        scale_up_after_s: float = 30.0,
    ) -> None:
        self.db, self.hub = db, hub
        self.interval_s, self.drain_s, self.runner_grace_s = interval_s, drain_s, runner_grace_s
        self.scale_up_after_s = scale_up_after_s
        # Deployment id -> since when requests have queued for its ready replicas' runners.
        self._queued_since: dict[str, float] = {}
        # Runner id -> when this process first saw it gone while it held replicas.
        self._missing_since: dict[str, float] = {}
        # For A/B splits: routed replica id -> its deployment; deployment id -> weight, names.
        self._routed: dict[str, str] = {}
        self._weights: dict[str, float] = {}
        self._names: dict[str, frozenset[str]] = {}
        # Routed replica id -> the name it answers to on its runner (its deployment's id where
        # the runner announced ``served-names``, else the public name).
        self._served: dict[str, str] = {}
        # Scale to zero: public name -> monotonic time of its last request here; and
        # name -> (deployment id, pool id) of deployments scaled to zero that a request wakes.
        self._used: dict[str, float] = {}
        self._sleeping: dict[str, list[tuple[str, str]]] = {}
        self._waking: dict[str, asyncio.Task[bool]] = {}  # A/B draws waking a sleeper
        # Name -> deployments with replicas wanted (ready or coming up): a request waits.
        self._coming: dict[str, list[tuple[str, str]]] = {}
        self._wake = asyncio.Event()
        self._reports: asyncio.Queue[tuple[str, ReplicaFrame]] = asyncio.Queue(MAX_PENDING_REPORTS)
        self._tasks: list[asyncio.Task[None]] = []
        # (runner id, replica id) -> (state, monotonic time) of its last report queued.
        self._progress: dict[tuple[str, str], tuple[str, float]] = {}
        self.passes = 0  # completed passes, for tests and /metrics
        # One pass at a time in this process; passes of other processes are kept from placing
        # twice by the deployment's ``placement_seq`` (see _claim).
        self._pass_lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        self.hub.listeners.append(self.runner_changed)
        self._tasks = [
            asyncio.create_task(self._loop(), name="deployments-reconcile"),
            asyncio.create_task(self._apply_reports(), name="deployments-reports"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def wake(self) -> None:
        """Reconcile now (a deployment changed, a runner came or went)."""
        self._wake.set()

    def runner_changed(self, runner: ConnectedRunner, connected: bool) -> None:
        self.wake()

    def replica_report(self, runner_id: str, frame: ReplicaFrame) -> None:
        """Link hook (sync, on the reader task): queue the report for the applier.

        Progress within one state is kept at most every ``PROGRESS_EVERY_S`` per replica (a
        runner sends two a second; a rogue one could send thousands, each a database write);
        a change of state is never dropped.
        """
        key = (runner_id, frame.replica_id)
        now = time.monotonic()
        last = self._progress.get(key)
        if last is not None and last[0] == frame.state and now - last[1] < PROGRESS_EVERY_S:
            return
        if len(self._progress) >= MAX_PENDING_REPORTS:
            self._progress.clear()  # bounded: invented replica ids cannot grow it
        self._progress[key] = (frame.state, now)
        try:
            self._reports.put_nowait((runner_id, frame))
        except asyncio.QueueFull:
            log.warning("replica report from %s dropped: queue full", runner_id)

    # --- reconcile ----------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception:  # a database outage must not end the loop
                log.exception("deployment reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def reconcile_once(self) -> None:
        async with self._pass_lock:
            await self._pass()

    async def _pass(self) -> None:
        plan = _Pass()
        async with self.db.session() as session:
            deployments = await list_live_deployments(session)
            replicas = await replicas_by_deployment(session, [d.id for d in deployments])
            self._weights = {d.id: d.weight for d in deployments}
            self._sleeping, self._coming = {}, {}
            for d in deployments:
                if d.status != "active":
                    continue
                # Coming up: replicas wanted and one placed that has not failed (a deployment
                # no runner fits, or whose replicas all failed, is a 404 rather than a wait).
                placed = [r for r in replicas[d.id] if r.state != "failed"]
                if d.replicas > 0 and not placed:
                    continue
                into = self._sleeping if d.replicas == 0 else self._coming
                for n in (d.name, *d.aliases):
                    into.setdefault(n, []).append((d.id, d.pool_id))
            self._names = {d.id: frozenset((d.name, *d.aliases)) for d in deployments}
            for d in deployments:
                for r in replicas[d.id]:
                    plan.load[r.runner_id] = plan.load.get(r.runner_id, 0) + 1
                    plan.names.setdefault(r.runner_id, set()).add((d.name, d.id))
            self._track_missing(replicas)
            for d in deployments:
                await self._reconcile(session, d, replicas[d.id], plan)
            await session.commit()
        for runner_id, replica_id in plan.unroute:
            self.hub.set_deployed(runner_id, replica_id, None)
            self._routed.pop(replica_id, None)
            self._served.pop(replica_id, None)
        for runner_id, frame in plan.sends:
            await self._send(runner_id, frame)
        self.passes += 1

    async def _reconcile(
        self,
        session: AsyncSession,
        d: Deployment,
        rows: list[DeploymentReplica],
        plan: _Pass,
    ) -> None:
        live: list[DeploymentReplica] = []
        for r in rows:
            if r.state == "stopped" or self._lost(r.runner_id):
                # Runner lost (or replica stopped): forget it; a new one is placed below.
                await session.delete(r)
                plan.unroute.append((r.runner_id, r.id))
            else:
                live.append(r)
        if d.status == "deleting":
            for r in live:
                self._undeploy(r, plan)
            if not live:
                await session.delete(d)
            return
        await self._unload_if_idle(session, d)
        await self._scale_up_if_queueing(session, d, live)
        current = [
            r for r in live if r.generation == d.generation and r.state not in (*_GONE, "failed")
        ]
        # Rolling update: keep as many older replicas as the current generation lacks ready ones.
        ready_now = sum(1 for r in current if r.state == "ready")
        older = [r for r in live if r.generation != d.generation and r.state not in _GONE]
        keep_old = max(0, d.replicas - ready_now)
        older.sort(key=lambda r: r.state != "ready")  # ready ones are kept first
        for r in older[keep_old:]:
            self._undeploy(r, plan)
        for r in [r for r in live if r.generation != d.generation and r.state == "failed"]:
            await session.delete(r)
        if len(current) > d.replicas:
            current.sort(key=lambda r: (r.state == "ready", r.created_at), reverse=False)
            for r in current[: len(current) - d.replicas]:
                self._undeploy(r, plan)
        elif len(current) < d.replicas:
            await self._place(session, d, live, d.replicas - len(current), plan)

    def _track_missing(self, replicas: dict[str, list[DeploymentReplica]]) -> None:
        now = time.monotonic()
        holders = {r.runner_id for rows in replicas.values() for r in rows}
        # A runner another control-plane replica holds is not lost (hub.remote, with Redis).
        present = set(self.hub.runners) | set(self.hub.remote)
        for runner_id in holders - present:
            self._missing_since.setdefault(runner_id, now)
        for runner_id in list(self._missing_since):
            if runner_id in present or runner_id not in holders:
                del self._missing_since[runner_id]

    def _lost(self, runner_id: str) -> bool:
        """Gone longer than the grace: a tunnel that flaps keeps its replicas (the runner
        re-sends their reports on reconnect); a runner that stays away loses them."""
        since = self._missing_since.get(runner_id)
        return since is not None and time.monotonic() - since >= self.runner_grace_s

    async def _place(
        self,
        session: AsyncSession,
        d: Deployment,
        live: list[DeploymentReplica],
        count: int,
        plan: _Pass,
    ) -> None:
        # A runner holds one replica of a generation; one that failed it is not asked again.
        taken = {r.runner_id for r in live if r.generation == d.generation and r.state not in _GONE}
        fitting = [
            runner
            for runner in self.hub.runners.values()
            if runner.runner_id not in taken
            and runner_fits(runner, d)
            and not self._name_taken(runner, d, plan)
        ]
        picked = pick_runners(fitting, plan.load, count)
        if not picked or not await _claim(session, d):  # the claim: a write, only when placing
            return
        for runner in picked:
            replica = DeploymentReplica(
                id=new_id("rep"),
                deployment_id=d.id,
                runner_id=runner.runner_id,
                generation=d.generation,
                state="pending",
            )
            session.add(replica)
            plan.load[runner.runner_id] = plan.load.get(runner.runner_id, 0) + 1
            plan.names.setdefault(runner.runner_id, set()).add((d.name, d.id))
            served = d.id if _served_names(runner) else None
            plan.sends.append((runner.runner_id, _deploy_frame(d, replica.id, served)))

    @staticmethod
    def _name_taken(runner: ConnectedRunner[Link], d: Deployment, plan: _Pass) -> bool:
        """A request names only the model: one runner serves a public name for one deployment
        (A/B deployments of one name share it across runners), never beside a static model.
        A runner with ``served-names`` asks each replica for a name of its own: no clash."""
        if _served_names(runner):
            return False
        names = {d.name, *d.aliases}
        others = {n for n, dep in plan.names.get(runner.runner_id, ()) if dep != d.id}
        if names & others:
            return True
        static = [m for m in runner.models if all(m is not x for x in runner.deployed.values())]
        return any(n == m.name or n in m.aliases for m in static for n in names)

    def _undeploy(self, r: DeploymentReplica, plan: _Pass) -> None:
        if r.state in _GONE:
            return
        r.state, r.updated_at = "draining", utcnow()
        # Out of routing at once: streams already open finish within the drain.
        plan.unroute.append((r.runner_id, r.id))
        plan.sends.append((r.runner_id, UndeployFrame(replica_id=r.id, drain_s=self.drain_s)))

    async def _send(self, runner_id: str, frame: DeployFrame | UndeployFrame) -> None:
        runner = self.hub.runners.get(runner_id)
        links = [
            ln
            for ln in (runner.links if runner else [])
            if not ln.closed and "deployments" in ln.capabilities
        ]
        if not links:
            log.info("runner %s gone before %s was sent", runner_id, frame.type)
            return  # the next pass sees the runner gone and re-places
        try:
            await links[0].send(frame)
        except (ConnectionError, RuntimeError) as exc:
            log.info("%s to runner %s not sent: %s", frame.type, runner_id, exc)

    # --- reports ------------------------------------------------------------

    async def _apply_reports(self) -> None:
        while True:
            runner_id, frame = await self._reports.get()
            try:
                reply = await self.apply_report(runner_id, frame)
            except Exception:
                log.exception("replica report from %s not applied", runner_id)
                continue
            if reply is not None:
                await self._send(runner_id, reply)

    async def apply_report(self, runner_id: str, frame: ReplicaFrame) -> UndeployFrame | None:
        """Record one report; returns a frame to answer with (an undeploy), if any."""
        async with self.db.session() as session:
            row = await get_replica(session, frame.replica_id)
            if row is None or row.runner_id != runner_id:
                # Unknown here, or another runner's: never trusted, and stopped if it runs.
                log.warning(
                    "runner %s reported unknown replica %r (%s)",
                    runner_id,
                    frame.replica_id,
                    frame.state,
                )
                if frame.state in ("stopped", "failed"):
                    return None
                return UndeployFrame(replica_id=frame.replica_id, drain_s=0)
            d = await get_deployment(session, row.deployment_id)
            assert d is not None  # a replica goes with its deployment (cascade)
            runner = self.hub.runners.get(runner_id)
            served = d.id if runner is not None and _served_names(runner) else d.name
            reply = self._record(row, d, frame, served)
            await session.commit()
        model = self._routed_model(d, frame) if row.state == "ready" else None
        self.hub.set_deployed(runner_id, row.id, model)
        if model is not None:
            self._routed[row.id] = d.id
            self._served[row.id] = served
            self._weights[d.id], self._names[d.id] = d.weight, frozenset((d.name, *d.aliases))
        else:
            self._routed.pop(row.id, None)
            self._served.pop(row.id, None)
        self.wake()
        return reply

    def _record(
        self, row: DeploymentReplica, d: Deployment, frame: ReplicaFrame, served: str
    ) -> UndeployFrame | None:
        now = utcnow()
        row.bytes_done, row.bytes_total = frame.bytes_done, frame.bytes_total
        row.rate_bps, row.updated_at = frame.rate_bps, now
        if row.state == "draining" and frame.state not in ("stopped", "failed"):
            return None  # told to stop: a late progress report does not bring it back
        if frame.model is not None and frame.model.name != served:
            row.state = "failed"
            row.reason = f"runner reported serving {frame.model.name[:200]!r}, not {served!r}"
            log.warning("replica %s: %s", row.id, row.reason)
            return UndeployFrame(replica_id=row.id, drain_s=0)
        row.state = frame.state
        row.reason = frame.reason
        if frame.state == "ready" and row.ready_at is None:
            row.ready_at = now
        if frame.state == "failed":
            log.info("replica %s failed: %r", row.id, frame.reason)
        return None

    @staticmethod
    def _routed_model(d: Deployment, frame: ReplicaFrame) -> ModelInfo | None:
        """What the hub routes: the runner's facts, under the deployment's name and aliases only."""
        if frame.model is None:
            return None
        return frame.model.model_copy(update={"name": d.name, "aliases": list(d.aliases)})


async def _claim(session: AsyncSession, d: Deployment) -> bool:
    """Take the right to place replicas of ``d`` in this pass: bump ``placement_seq`` from the
    value read. Another pass (another control-plane replica) that placed meanwhile bumped it
    first: this update then matches no row and this pass places nothing; the next one reads
    the replicas it added. On PostgreSQL the second update waits for the first's commit and
    then matches nothing; SQLite lets one writer at a time."""
    seen = d.placement_seq
    result = await session.execute(
        update(Deployment)
        .where(Deployment.id == d.id, Deployment.placement_seq == seen)
        .values(placement_seq=seen + 1)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        log.info("deployment %s: another pass placed its replicas; not placing", d.id)
        return False
    set_committed_value(d, "placement_seq", seen + 1)
    return True


def _served_names(runner: ConnectedRunner[Link]) -> bool:
    """The runner asks each replica for a name of its own (deploy.v1 ``served_name``)."""
    return any(not ln.closed and "served-names" in ln.capabilities for ln in runner.links)


def _deploy_frame(d: Deployment, replica_id: str, served: str | None) -> DeployFrame:
    return DeployFrame.model_validate(
        {
            "served_name": served,
            "replica_id": replica_id,
            "deployment_id": d.id,
            "generation": d.generation,
            "name": d.name,
            "aliases": list(d.aliases),
            "source": d.source,
            "engine": d.engine,
            "engine_options": dict(d.engine_options),
        }
    )
