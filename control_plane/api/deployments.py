"""Deployments of the caller's tenant (docs/api.md "Deployments", docs/deployments.md).

Reads are open to any key of the tenant; writes need an admin key. Another
tenant's deployment is a 404, like one that does not exist. Runners'
static models (those they were started with) are listed read-only under
``static``: the control plane cannot undeploy them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.deployments import (
    MAX_REPLICAS,
    DeploymentPatch,
    DeploymentSpec,
    change_deployment,
    create_deployment,
    delete_deployment,
    find_deployment,
    scale_deployment,
)
from outpost.control_plane.api.deps import (
    AppStateDep,
    CallerDep,
    DeploymentsWriteDep,
    SessionDep,
)
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.db.models import Deployment, DeploymentReplica
from outpost.control_plane.deployments.compare import compare_deployments
from outpost.control_plane.state import AppState
from outpost.control_plane.store.deployments import (
    list_deployments,
    list_replicas,
    replicas_by_deployment,
)
from outpost.control_plane.store.pools import list_pools

__all__ = ["ReplicaOut", "deployment_out", "router", "static_models"]

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


class ReplicaOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    runner_id: str
    generation: int
    state: str
    bytes_done: int
    bytes_total: int | None
    rate_bps: float
    #: Seconds left at the current rate, while downloading with a known size.
    eta_s: float | None = None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    ready_at: datetime | None


class ScaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(ge=0, le=MAX_REPLICAS, strict=True)


def replica_out(r: DeploymentReplica) -> ReplicaOut:
    out = ReplicaOut.model_validate(r)
    if r.state == "downloading" and r.bytes_total and r.rate_bps > 0:
        out.eta_s = round(max(0, r.bytes_total - r.bytes_done) / r.rate_bps, 1)
    return out


def deployment_out(d: Deployment, replicas: list[DeploymentReplica]) -> dict[str, Any]:
    ready = sum(1 for r in replicas if r.state == "ready" and r.generation == d.generation)
    return {
        "object": "deployment",
        "id": d.id,
        "name": d.name,
        "aliases": list(d.aliases),
        "pool_id": d.pool_id,
        "source": d.source,
        "engine": d.engine,
        "engine_options": d.engine_options,
        "labels": d.labels,
        "min_replicas": d.min_replicas,
        "max_replicas": d.max_replicas,
        "replicas": d.replicas,
        "ready_replicas": ready,
        "weight": d.weight,
        "generation": d.generation,
        "status": d.status,
        "idle_timeout_s": d.idle_timeout_s,
        "created_by": d.created_by,
        "created_at": d.created_at.isoformat(),
        "updated_at": d.updated_at.isoformat(),
        "replica_status": [replica_out(r).model_dump(mode="json") for r in replicas],
    }


def static_models(state: AppState, pool_ids: set[str]) -> list[dict[str, Any]]:
    """Models runners of these pools were started with: shown, not managed from here."""
    found: list[dict[str, Any]] = []
    for runner in state.hub.runners.values():
        if runner.pool_id not in pool_ids:
            continue
        deployed = {id(m) for m in runner.deployed.values()}
        for m in runner.models:
            if id(m) not in deployed:
                found.append(
                    {
                        "object": "static_deployment",
                        "name": m.name,
                        "aliases": list(m.aliases),
                        "engine": m.engine,
                        "runner_id": runner.runner_id,
                        "pool_id": runner.pool_id,
                    }
                )
    return found


def _wake(state: AppState, row: Deployment | None = None) -> None:
    if state.deployments is not None:
        if row is not None:
            state.deployments.note(row)
        state.deployments.wake()


@router.get("")
async def get_deployments(
    caller: CallerDep, session: SessionDep, state: AppStateDep
) -> dict[str, Any]:
    rows = [d for d in await list_deployments(session, caller.tenant_id)]
    replicas = await replicas_by_deployment(session, [d.id for d in rows])
    pools = {p.id for p in await list_pools(session, caller.tenant_id)}
    return {
        "object": "list",
        "data": [deployment_out(d, replicas[d.id]) for d in rows],
        "static": static_models(state, pools),
    }


@router.post("", status_code=201)
async def create(
    body: DeploymentSpec, admin: DeploymentsWriteDep, session: SessionDep, state: AppStateDep
) -> dict[str, Any]:
    row = await create_deployment(
        session, admin.tenant_id, body, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    _wake(state, row)
    return deployment_out(row, [])


@router.get("/compare")
async def compare(
    caller: CallerDep,
    session: SessionDep,
    name: Annotated[str, Query(min_length=1, max_length=200)],
    window_s: Annotated[int, Query(ge=60, le=30 * 86400)] = 3600,
) -> dict[str, Any]:
    """Deployments serving ``name`` side by side over the last ``window_s`` (A/B)."""
    rows = await compare_deployments(session, caller.tenant_id, name, window_s)
    return {"object": "list", "name": name, "window_s": window_s, "data": rows}


@router.get("/{deployment_id}")
async def get_one(deployment_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    row = await find_deployment(session, caller.tenant_id, deployment_id)
    return deployment_out(row, await list_replicas(session, row.id))


@router.patch("/{deployment_id}")
async def update(
    deployment_id: str,
    body: DeploymentPatch,
    admin: DeploymentsWriteDep,
    session: SessionDep,
    state: AppStateDep,
) -> dict[str, Any]:
    """Change a deployment; a new source, engine, options or aliases roll its replicas."""
    row = await change_deployment(
        session, admin.tenant_id, deployment_id, body, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    _wake(state, row)
    return deployment_out(row, await list_replicas(session, row.id))


@router.post("/{deployment_id}/scale")
async def scale(
    deployment_id: str,
    body: ScaleIn,
    admin: DeploymentsWriteDep,
    session: SessionDep,
    state: AppStateDep,
) -> dict[str, Any]:
    row = await scale_deployment(
        session,
        admin.tenant_id,
        deployment_id,
        body.replicas,
        actor=actor_for_key(admin.api_key_id),
    )
    await session.commit()
    _wake(state)
    return deployment_out(row, await list_replicas(session, row.id))


@router.delete("/{deployment_id}", status_code=204)
async def delete(
    deployment_id: str, admin: DeploymentsWriteDep, session: SessionDep, state: AppStateDep
) -> Response:
    """Undeploy every replica; the deployment is gone from listings at once."""
    await delete_deployment(
        session, admin.tenant_id, deployment_id, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    _wake(state)
    return Response(status_code=204)
