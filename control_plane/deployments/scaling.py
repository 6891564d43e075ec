"""Scaling of deployments by the reconciler: to zero when idle, up while requests queue, and
awake again on a request (docs/deployments.md "Scale to zero and wake-up").

A mixin of :class:`~control_plane.deployments.reconciler.Reconciler`, which holds the state
declared here and calls these from its passes and from the request path.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Deployment, DeploymentReplica, utcnow
from outpost.control_plane.store.deployments import get_deployment
from outpost.control_plane.tunnel.hub import TunnelHub

__all__ = ["ScalingMixin"]

log = logging.getLogger("outpost.deployments")

#: A scale-to-zero deployment's last request is written (``last_request_at``) at most this often,
#: and at most a quarter of its idle timeout apart: the idle clock survives a restart of the
#: control plane, and counts other replicas' requests, without a write per request.
LAST_USED_EVERY_S = 30.0


class ScalingMixin:
    db: Database
    hub: TunnelHub
    scale_up_after_s: float
    # Deployment id -> since when requests have queued for its ready replicas' runners.
    _queued_since: dict[str, float]
    # Public name -> monotonic time of its last request here.
    _used: dict[str, float]
    # Name -> (deployment id, pool id): scaled to zero (a request wakes them) / coming up.
    _sleeping: dict[str, list[tuple[str, str]]]
    _coming: dict[str, list[tuple[str, str]]]

    def wake(self) -> None:
        raise NotImplementedError  # the reconciler's: run a pass now

    async def _unload_if_idle(self, session: AsyncSession, d: Deployment) -> None:
        """``min_replicas: 0`` and idle past ``idle_timeout_s``: scale to 0 (a request wakes it).

        Idle counts from the later of the name's last request here and the deployment's last
        change, so scaling up by hand is not undone at once.
        """
        if d.min_replicas != 0 or d.idle_timeout_s is None:
            return
        self._note_last_used(d, d.idle_timeout_s)
        if d.replicas == 0:
            return
        now = utcnow()
        changed_ago = (now - _aware(d.updated_at)).total_seconds()
        stored = d.last_request_at
        stored_ago = (now - _aware(stored)).total_seconds() if stored else changed_ago
        uses = [self._used[n] for n in (d.name, *d.aliases) if n in self._used]
        used_ago = time.monotonic() - max(uses) if uses else stored_ago
        idle_s = min(changed_ago, stored_ago, used_ago)
        if idle_s < d.idle_timeout_s:
            return
        before, d.replicas, d.updated_at = d.replicas, 0, utcnow()
        await record_admin(
            session,
            actor="control-plane:idle",
            action=AuditAction.DEPLOYMENT_SCALE,
            tenant_id=d.tenant_id,
            target=d.id,
            details={"from": before, "to": 0, "idle_s": round(idle_s)},
        )
        log.info("deployment %s idle for %ds: scaled to 0", d.id, d.idle_timeout_s)

    def _note_last_used(self, d: Deployment, idle_timeout_s: int) -> None:
        """Carry the latest request for ``d``'s names here into ``last_request_at`` (written with
        the pass), when it is a step newer than the stored one."""
        uses = [self._used[n] for n in (d.name, *d.aliases) if n in self._used]
        if not uses:
            return
        when = utcnow() - timedelta(seconds=time.monotonic() - max(uses))
        stored = d.last_request_at
        step = min(LAST_USED_EVERY_S, idle_timeout_s / 4)
        if stored is None or (when - _aware(stored)).total_seconds() >= step:
            d.last_request_at = when

    async def _scale_up_if_queueing(
        self, session: AsyncSession, d: Deployment, live: list[DeploymentReplica]
    ) -> None:
        """Requests queued in admission for the runners of its ready replicas for
        ``scale_up_after_s`` without a break: one more replica, up to ``max_replicas``.

        A runner's queue counts every model it serves, so a runner shared with another model's
        traffic may scale a deployment that is not the bottleneck; docs/deployments.md says so.
        """
        runners = {r.runner_id for r in live if r.state == "ready"}
        queued = sum(self.hub.runners[rid].queued for rid in runners if rid in self.hub.runners)
        if queued <= 0 or d.replicas >= d.max_replicas or d.replicas == 0:
            self._queued_since.pop(d.id, None)
            return
        now = time.monotonic()
        since = self._queued_since.setdefault(d.id, now)
        if now - since < self.scale_up_after_s:
            return
        self._queued_since.pop(d.id, None)
        before, d.replicas, d.updated_at = d.replicas, d.replicas + 1, utcnow()
        await record_admin(
            session,
            actor="control-plane:autoscale",
            action=AuditAction.DEPLOYMENT_SCALE,
            tenant_id=d.tenant_id,
            target=d.id,
            details={"from": before, "to": d.replicas, "queued": queued},
        )
        log.info(
            "deployment %s: requests queued for %.0fs: %d replicas", d.id, now - since, d.replicas
        )

    async def wake_for(
        self, model: str, pools: frozenset[str] | None, only: str | None = None
    ) -> bool:
        """A request for ``model`` found no runner: wake a deployment of that name scaled to 0
        in a pool the caller may use. Returns whether one is waking or already coming up (being
        placed, downloaded or loaded): then the request waits for it rather than being a 404.
        ``only``: wake that deployment (an A/B draw picked it while another serves the name)."""
        coming = self._coming.get(model, ())
        if only is None and any(pools is None or pool in pools for _, pool in coming):
            return True
        asleep = [
            dep
            for dep, pool in self._sleeping.get(model, ())
            if (pools is None or pool in pools) and only in (None, dep)
        ]
        if not asleep:
            return False
        self._used[model] = time.monotonic()
        async with self.db.session() as session:
            for dep in asleep:
                d = await get_deployment(session, dep)
                if d is None or d.status != "active" or d.replicas != 0:
                    continue
                d.replicas, d.updated_at = max(d.min_replicas, 1), utcnow()
                await record_admin(
                    session,
                    actor="control-plane:wake",
                    action=AuditAction.DEPLOYMENT_SCALE,
                    tenant_id=d.tenant_id,
                    target=d.id,
                    details={"from": 0, "to": d.replicas, "woken_by": model},
                )
            await session.commit()
        for name, sleepers in list(self._sleeping.items()):
            self._sleeping[name] = [x for x in sleepers if x[0] not in asleep]
            self._coming.setdefault(name, []).extend(x for x in sleepers if x[0] in asleep)
        self.wake()
        return True


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
