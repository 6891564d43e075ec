"""Keep live runners' owner-set labels, price and pool equal to their rows.

The hub's :class:`ConnectedRunner` copies a runner's owner-set fields at each
handshake. When the owner changes them (``PATCH /api/runners/{id}``), the
replica that took the change applies it at once (:func:`apply_owner_settings`);
the others hear of it as a tenant change through the key-cache channel
(``store.changes`` → ``cluster``) and re-read their live runners of that
tenant (:class:`OwnerSettingsSync`). Without Redis, one process: the first
path is enough.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sqlalchemy import select

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Runner
from outpost.control_plane.store.changes import ALL_TENANTS
from outpost.control_plane.tunnel.hub import TunnelHub
from outpost.sdk.pricing import CostModel

__all__ = ["OwnerSettingsSync", "apply_owner_settings"]

log = logging.getLogger("outpost.tunnel")


def apply_owner_settings(hub: TunnelHub, row: Runner) -> None:
    """Copy ``row``'s labels, cost and pool onto the runner if this process holds it."""
    live = hub.runners.get(row.id)
    if live is not None:
        live.labels, live.pool_id = dict(row.labels or {}), row.pool_id
        live.cost = CostModel.from_mapping(row.cost)
        hub.notify()


class OwnerSettingsSync:
    """Re-reads this process's live runners of tenants another replica changed."""

    def __init__(self, db: Database, hub: TunnelHub) -> None:
        self.db, self.hub = db, hub
        self._tasks: set[asyncio.Task[None]] = set()

    def changed_elsewhere(self, _key_ids: list[str], tenant_ids: list[str]) -> None:
        tenants = set(tenant_ids)
        ids = [
            r.runner_id
            for r in self.hub.runners.values()
            if ALL_TENANTS in tenants or r.tenant_id in tenants
        ]
        if ids:
            task = asyncio.get_running_loop().create_task(self.refresh(ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def refresh(self, runner_ids: Iterable[str]) -> None:
        try:
            async with self.db.session() as session:
                rows = (
                    await session.execute(select(Runner).where(Runner.id.in_(list(runner_ids))))
                ).scalars()
                for row in rows:
                    apply_owner_settings(self.hub, row)
        except Exception as exc:  # noqa: BLE001 - a reconnect re-reads the row anyway
            log.warning("could not re-read owner-set runner settings: %s", exc)
