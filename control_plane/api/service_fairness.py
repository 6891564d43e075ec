"""Live tenant service fairness: how the runners' capacity is being shared (docs/fairness.md)."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api.deps import AdminDep, AppStateDep

__all__ = ["router"]

router = APIRouter(prefix="/api/fairness", tags=["fairness"])


@router.get("/service")
async def service(state: AppStateDep, admin: AdminDep) -> dict:
    """Jain's index, worst share and largest gap over backlogged tenants; per-tenant latency; queues now.

    Other tenants appear under anonymous labels (``other-N``).
    """
    return state.admission.service_snapshot(admin.tenant_id)
