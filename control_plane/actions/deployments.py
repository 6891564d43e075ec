"""Deployment writes, shared by the API, the CLI and the console: checks plus audit events.

Each function takes a session and does not commit (the caller owns the
transaction). Refusals are :mod:`control_plane.domain_errors`.

Trust: a tenant deploys only onto its own pools. A grant lets another tenant
route requests to a pool, never put models on it (docs/deployments.md).
What the replicas run (source, engine, options, aliases) is part of the
``generation``: changing it rolls the replicas one by one (the reconciler).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.actions.pools import find_pool
from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import Deployment, new_id, utcnow
from outpost.control_plane.domain_errors import Invalid, NotFound
from outpost.control_plane.store.deployments import get_deployment, list_replicas
from outpost.control_plane.store.pools import default_pool
from outpost.sdk.protocol import DeployFrame, ModelSource

__all__ = [
    "MAX_DEPLOYMENTS_PER_TENANT",
    "MAX_REPLICAS",
    "DeploymentPatch",
    "DeploymentSpec",
    "change_deployment",
    "create_deployment",
    "delete_deployment",
    "find_deployment",
    "scale_deployment",
]

#: A tenant's deployments, live or being deleted: the reconciler reads them all each pass.
MAX_DEPLOYMENTS_PER_TENANT = 100
#: Replicas of one deployment.
MAX_REPLICAS = 64

_Label = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")
]
_PublicName = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$")
]
_Scalar = bool | int | float | str
_Replicas = Annotated[int, Field(ge=0, le=MAX_REPLICAS, strict=True)]
_Weight = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
_Idle = Annotated[int, Field(ge=10, le=7 * 24 * 3600, strict=True)]
_Labels = Annotated[
    dict[_Label, Annotated[list[_Label], Field(min_length=1, max_length=16)]],
    Field(max_length=16),
]


def _check_frame(
    name: str, aliases: list[str], source: Any, engine: str, options: dict[str, Any]
) -> None:
    """What a runner will be sent must pass the wire contract's own bounds (sdk.protocol)."""
    try:
        DeployFrame(
            replica_id="check",
            deployment_id="check",
            name=name,
            aliases=aliases,
            source=source,
            engine=engine,
            engine_options=options,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None


class DeploymentSpec(BaseModel):
    """A new deployment, as the API, the CLI and the console take it."""

    model_config = ConfigDict(extra="forbid")

    name: _PublicName
    aliases: list[_PublicName] = Field(default_factory=list, max_length=32)
    #: The target pool's id or name (the tenant's own); empty: its ``default`` pool.
    pool: str | None = Field(default=None, min_length=1, max_length=200)
    source: ModelSource
    engine: str = Field(default="auto", pattern=r"^(auto|llama\.cpp|vllm)$")
    engine_options: dict[str, _Scalar] = Field(default_factory=dict, max_length=16)
    labels: _Labels = Field(default_factory=dict)
    min_replicas: _Replicas = 1
    max_replicas: _Replicas = 1
    #: Replicas wanted now; default ``max(min_replicas, 1)``.
    replicas: _Replicas | None = None
    weight: _Weight = 1.0
    idle_timeout_s: _Idle | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentSpec:
        if self.max_replicas < max(self.min_replicas, 1):
            raise ValueError("max_replicas must be at least min_replicas and at least 1")
        if self.replicas is None:
            self.replicas = max(self.min_replicas, 1)
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError("replicas must lie between min_replicas and max_replicas")
        if self.name in self.aliases:
            raise ValueError("an alias repeats the name")
        _check_frame(self.name, self.aliases, self.source, self.engine, self.engine_options)
        return self


class DeploymentPatch(BaseModel):
    """A change: fields left out stay. Source, engine, options or aliases roll the replicas."""

    model_config = ConfigDict(extra="forbid")

    aliases: list[_PublicName] | None = Field(default=None, max_length=32)
    source: ModelSource | None = None
    engine: str | None = Field(default=None, pattern=r"^(auto|llama\.cpp|vllm)$")
    engine_options: dict[str, _Scalar] | None = Field(default=None, max_length=16)
    labels: _Labels | None = None
    min_replicas: _Replicas | None = None
    max_replicas: _Replicas | None = None
    weight: _Weight | None = None
    idle_timeout_s: _Idle | None = None


async def find_deployment(session: AsyncSession, tenant_id: str, deployment_id: str) -> Deployment:
    """The tenant's deployment; 404 otherwise (another tenant's included: no existence oracle)."""
    found = await get_deployment(session, deployment_id, tenant_id=tenant_id)
    if found is None or found.status == "deleting":
        raise NotFound(
            f"No deployment {deployment_id!r} in this tenant.", code="deployment_not_found"
        )
    return found


async def create_deployment(
    session: AsyncSession, tenant_id: str, spec: DeploymentSpec, *, actor: str
) -> Deployment:
    count = (
        await session.execute(
            select(func.count()).select_from(Deployment).where(Deployment.tenant_id == tenant_id)
        )
    ).scalar_one()
    if count >= MAX_DEPLOYMENTS_PER_TENANT:
        raise Invalid(
            f"A tenant holds at most {MAX_DEPLOYMENTS_PER_TENANT} deployments.",
            code="too_many_deployments",
        )
    pool = (
        await find_pool(session, tenant_id, spec.pool)
        if spec.pool
        else await default_pool(session, tenant_id)
    )
    assert spec.replicas is not None  # set by the validator
    row = Deployment(
        id=new_id("dep"),
        tenant_id=tenant_id,
        pool_id=pool.id,
        name=spec.name,
        aliases=list(spec.aliases),
        source=spec.source.model_dump(mode="json"),
        engine=spec.engine,
        engine_options=dict(spec.engine_options),
        labels={k: list(v) for k, v in spec.labels.items()},
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        replicas=spec.replicas,
        weight=spec.weight,
        idle_timeout_s=spec.idle_timeout_s,
        created_by=actor,
    )
    session.add(row)
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.DEPLOYMENT_CREATE,
        tenant_id=tenant_id,
        target=row.id,
        details={"name": row.name, "pool_id": pool.id, "source": row.source, "engine": row.engine},
    )
    return row


def _rolls(row: Deployment, patch: DeploymentPatch) -> dict[str, Any]:
    """The fields of ``patch`` that change what replicas run, with their new values."""
    changed: dict[str, Any] = {}
    if patch.aliases is not None and patch.aliases != row.aliases:
        changed["aliases"] = list(patch.aliases)
    if patch.source is not None and patch.source.model_dump(mode="json") != row.source:
        changed["source"] = patch.source.model_dump(mode="json")
    if patch.engine is not None and patch.engine != row.engine:
        changed["engine"] = patch.engine
    if patch.engine_options is not None and patch.engine_options != row.engine_options:
        changed["engine_options"] = dict(patch.engine_options)
    return changed


async def change_deployment(
    session: AsyncSession, tenant_id: str, deployment_id: str, patch: DeploymentPatch, *, actor: str
) -> Deployment:
    row = await find_deployment(session, tenant_id, deployment_id)
    rolled = _rolls(row, patch)
    merged = {
        "aliases": rolled.get("aliases", row.aliases),
        "source": rolled.get("source", row.source),
        "engine": rolled.get("engine", row.engine),
        "engine_options": rolled.get("engine_options", row.engine_options),
    }
    lo = row.min_replicas if patch.min_replicas is None else patch.min_replicas
    hi = row.max_replicas if patch.max_replicas is None else patch.max_replicas
    if hi < max(lo, 1):
        raise Invalid("max_replicas must be at least min_replicas and at least 1.")
    if row.name in merged["aliases"]:
        raise Invalid("An alias repeats the name.", param="aliases")
    try:
        _check_frame(
            row.name,
            merged["aliases"],
            merged["source"],
            merged["engine"],
            merged["engine_options"],
        )
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    plain: dict[str, Any] = {}
    for field in ("labels", "weight", "idle_timeout_s"):
        value = getattr(patch, field)
        if value is not None and value != getattr(row, field):
            plain[field] = value
    if patch.min_replicas is not None or patch.max_replicas is not None:
        plain["min_replicas"], plain["max_replicas"] = lo, hi
    for field, value in {**rolled, **plain}.items():
        setattr(row, field, value)
    row.replicas = min(max(row.replicas, lo), hi)
    if rolled:
        row.generation += 1
    row.updated_at = utcnow()
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.DEPLOYMENT_UPDATE,
        tenant_id=tenant_id,
        target=row.id,
        details={"changed": sorted({**rolled, **plain}), "generation": row.generation},
    )
    return row


async def scale_deployment(
    session: AsyncSession, tenant_id: str, deployment_id: str, replicas: int, *, actor: str
) -> Deployment:
    row = await find_deployment(session, tenant_id, deployment_id)
    if not row.min_replicas <= replicas <= row.max_replicas:
        raise Invalid(
            f"replicas must lie between min_replicas ({row.min_replicas}) "
            f"and max_replicas ({row.max_replicas}).",
            param="replicas",
        )
    before, row.replicas, row.updated_at = row.replicas, replicas, utcnow()
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.DEPLOYMENT_SCALE,
        tenant_id=tenant_id,
        target=row.id,
        details={"from": before, "to": replicas},
    )
    return row


async def delete_deployment(
    session: AsyncSession, tenant_id: str, deployment_id: str, *, actor: str
) -> None:
    """Undeploy every replica, then forget the deployment; at once when it has none."""
    row = await find_deployment(session, tenant_id, deployment_id)
    details = {"name": row.name}
    if await list_replicas(session, row.id):
        row.status, row.replicas, row.updated_at = "deleting", 0, utcnow()
    else:
        await session.delete(row)
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.DEPLOYMENT_DELETE,
        tenant_id=tenant_id,
        target=deployment_id,
        details=details,
    )
