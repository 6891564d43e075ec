"""Deployments and their replicas (docs/deployments.md).

Functions take a session, never commit, and return rows or ``None``. A
deployment is read with its tenant (``tenant_id``) so that another tenant's
deployment is simply not found.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Deployment, DeploymentReplica

__all__ = [
    "get_deployment",
    "get_replica",
    "list_deployments",
    "list_live_deployments",
    "list_replicas",
    "replicas_by_deployment",
]


async def get_deployment(
    session: AsyncSession, deployment_id: str, tenant_id: str | None = None
) -> Deployment | None:
    stmt = select(Deployment).where(Deployment.id == deployment_id)
    if tenant_id is not None:
        stmt = stmt.where(Deployment.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_deployments(session: AsyncSession, tenant_id: str) -> list[Deployment]:
    stmt = (
        select(Deployment)
        .where(Deployment.tenant_id == tenant_id)
        .order_by(Deployment.created_at, Deployment.id)
    )
    return list((await session.execute(stmt)).scalars())


async def list_live_deployments(session: AsyncSession) -> list[Deployment]:
    """Every tenant's deployments: what the reconciler works through."""
    stmt = select(Deployment).order_by(Deployment.created_at, Deployment.id)
    return list((await session.execute(stmt)).scalars())


async def list_replicas(session: AsyncSession, deployment_id: str) -> list[DeploymentReplica]:
    stmt = (
        select(DeploymentReplica)
        .where(DeploymentReplica.deployment_id == deployment_id)
        .order_by(DeploymentReplica.created_at, DeploymentReplica.id)
    )
    return list((await session.execute(stmt)).scalars())


async def replicas_by_deployment(
    session: AsyncSession, deployment_ids: list[str]
) -> dict[str, list[DeploymentReplica]]:
    """Replicas of several deployments in one query, grouped by deployment id."""
    found: dict[str, list[DeploymentReplica]] = {d: [] for d in deployment_ids}
    if not deployment_ids:
        return found
    stmt = (
        select(DeploymentReplica)
        .where(DeploymentReplica.deployment_id.in_(deployment_ids))
        .order_by(DeploymentReplica.created_at, DeploymentReplica.id)
    )
    for row in (await session.execute(stmt)).scalars():
        found[row.deployment_id].append(row)
    return found


async def get_replica(session: AsyncSession, replica_id: str) -> DeploymentReplica | None:
    return await session.get(DeploymentReplica, replica_id)
