"""Issue 22: two reconcile passes racing (two control-plane replicas on one database) place each
replica once (docs/deployments.md "The reconciler").

Each reconciler holds its own hub with one runner of the same pool, as two replicas behind Redis
each hold the tunnels of their own runners; both read the same deployments short of a replica
and would each place one. The deployment's ``placement_seq`` lets one of them place it.
The runners are in-process: their links are honest fakes at the hub's seam that record frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import Deployment, DeploymentReplica, Runner, new_id
from outpost.control_plane.deployments.reconciler import Reconciler
from outpost.control_plane.store.pools import default_pool
from outpost.control_plane.store.tenants import get_or_create_tenant
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.sdk.protocol import DeployFrame

DEPLOYMENTS = 4


class RecordingLink:
    """A live tunnel link that announced deployments; it keeps the frames sent to it."""

    closed = False
    draining = False
    open_streams = 0
    capabilities = frozenset({"deployments", "served-names"})

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, frame: Any) -> None:
        self.sent.append(frame)


def _hub(runner_id: str, tenant_id: str, pool_id: str) -> tuple[TunnelHub, RecordingLink]:
    hub, link = TunnelHub(), RecordingLink()
    runner = ConnectedRunner(runner_id, tenant_id, runner_id, [], 4, pool_id=pool_id)
    runner.links.append(link)  # type: ignore[arg-type]
    hub.runners[runner_id] = runner
    return hub, link


async def _replicas(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = (await session.execute(select(DeploymentReplica))).scalars().all()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.deployment_id] = counts.get(r.deployment_id, 0) + 1
    return counts


@pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)
async def test_racing_passes_place_each_replica_once(fresh_database_url: str) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "racers")
            pool = await default_pool(session, tenant.id)
            for runner_id in ("runner-a", "runner-b"):
                session.add(
                    Runner(
                        id=runner_id,
                        tenant_id=tenant.id,
                        pool_id=pool.id,
                        name=runner_id,
                        identity_public_key="k-" + runner_id,
                    )
                )
            ids = [new_id("dep") for _ in range(DEPLOYMENTS)]
            for dep_id in ids:
                session.add(
                    Deployment(
                        id=dep_id,
                        tenant_id=tenant.id,
                        pool_id=pool.id,
                        name="raced",
                        source={"kind": "path", "path": "smol.gguf"},
                    )
                )
            await session.commit()
        (hub_a, link_a), (hub_b, link_b) = (
            _hub("runner-a", tenant.id, pool.id),
            _hub("runner-b", tenant.id, pool.id),
        )
        a, b = Reconciler(db, hub_a), Reconciler(db, hub_b)
        outcomes = await asyncio.gather(
            a.reconcile_once(), b.reconcile_once(), return_exceptions=True
        )
        # SQLite lets one writer at a time: the loser may fail its pass (logged, retried).
        assert all(o is None or "locked" in str(o) for o in outcomes), outcomes
        assert await _replicas(db) == dict.fromkeys(ids, 1)
        sent = [f for f in (*link_a.sent, *link_b.sent) if isinstance(f, DeployFrame)]
        assert sorted(f.deployment_id for f in sent) == sorted(ids)
        # Later passes of both see the replicas placed: nothing more is placed.
        for _ in range(2):
            await a.reconcile_once()
            await b.reconcile_once()
        assert await _replicas(db) == dict.fromkeys(ids, 1)
        assert len(link_a.sent) + len(link_b.sent) == DEPLOYMENTS
    finally:
        await db.dispose()
