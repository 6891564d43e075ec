"""Live tenant service fairness: how the runners' capacity is being shared (docs/fairness.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from outpost.control_plane.api.deps import AdminDep, AppStateDep
from outpost.control_plane.store.pools import usable_pool_ids

__all__ = ["router"]

router = APIRouter(prefix="/api/fairness", tags=["fairness"])


@router.get("/service")
async def service(state: AppStateDep, admin: AdminDep) -> dict[str, Any]:
    """Jain's index, worst share and largest gap over backlogged tenants; per-tenant latency;
    queues now.

    Other tenants appear under anonymous labels (``other-N``); runners only if the caller may use
    their pool (another tenant's runners are not listed: issue 19).
    """
    snap = state.admission.service_snapshot(admin.tenant_id)
    if admin.policy is not None:
        pools = admin.policy.pools
    else:
        async with state.db.session() as session:
            pools = await usable_pool_ids(session, admin.tenant_id)

    def usable(queue: str) -> bool:
        live = state.hub.lookup(
            queue.split("#", 1)[0]
        )  # per-engine queues are "{runner_id}#{model}"
        return live is not None and live.pool_id in pools

    snap["runners"] = {k: v for k, v in snap["runners"].items() if usable(k)}
    return snap
