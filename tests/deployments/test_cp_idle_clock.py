"""Issue 22: the idle clock of scale to zero survives a restart of the control plane.

A request for a deployment's name is noted in memory; the reconcile pass writes it to
``last_request_at`` at most a step apart (not a write per request). A reconciler started afresh
on the same database (a restarted control plane) counts idle time from it: the deployment used a
moment ago stays up, one never used since its change long ago is scaled to zero.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import Deployment, new_id, utcnow
from outpost.control_plane.deployments.reconciler import Reconciler
from outpost.control_plane.store.deployments import get_deployment
from outpost.control_plane.store.pools import default_pool
from outpost.control_plane.store.tenants import get_or_create_tenant
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub

IDLE_S = 600


@pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)
async def test_the_idle_clock_survives_a_restart(fresh_database_url: str) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        long_ago = utcnow() - timedelta(seconds=10 * IDLE_S)  # its last change
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "sleepers")
            pool = await default_pool(session, tenant.id)
            used, unused = new_id("dep"), new_id("dep")
            for dep_id, name in ((used, "used-model"), (unused, "unused-model")):
                session.add(
                    Deployment(
                        id=dep_id,
                        tenant_id=tenant.id,
                        pool_id=pool.id,
                        name=name,
                        source={"kind": "path", "path": "smol.gguf"},
                        min_replicas=0,
                        idle_timeout_s=IDLE_S,
                        updated_at=long_ago,
                    )
                )
            await session.commit()

        async def row(dep_id: str) -> Deployment:
            async with db.session() as session:
                found = await get_deployment(session, dep_id)
            assert found is not None
            return found

        before = Reconciler(db, TunnelHub())
        # A request routed to the name (the request path's split notes it); no runner is needed
        # here beyond one that serves it.
        serving = ConnectedRunner("r", tenant.id, "r", [], 1, pool_id=pool.id)
        for _ in range(50):
            before.split("used-model", [serving])
        await before.reconcile_once()
        first = (await row(used)).last_request_at
        assert first is not None and (await row(unused)).last_request_at is None
        # More requests within the step: not written again (batched, not one write a request).
        before.split("used-model", [serving])
        await before.reconcile_once()
        assert (await row(used)).last_request_at == first
        # The idle deployment was scaled to 0 by the first process already; the used one not.
        assert ((await row(used)).replicas, (await row(unused)).replicas) == (1, 0)

        async with db.session() as session:  # the unused one back up by hand, a change long ago
            d = await get_deployment(session, unused)
            assert d is not None
            d.replicas, d.updated_at = 1, long_ago
            await session.commit()
        after = Reconciler(db, TunnelHub())  # a restarted control plane: nothing in memory
        await after.reconcile_once()
        assert (await row(used)).replicas == 1  # used a moment ago, by the stored clock
        assert (await row(unused)).replicas == 0
    finally:
        await db.dispose()
