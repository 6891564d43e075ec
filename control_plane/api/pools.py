"""Runner pools of the caller's tenant and the grants that share them (docs/api.md, "Pools").

Reads are open to any key of the tenant; writes need an admin key. A grant is
listed on both sides (``direction``: ``outgoing`` for the owner, ``incoming``
for the grantee) and either side may revoke it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.pools import (
    EVERY_TENANT,
    add_pool,
    find_pool,
    give_grant,
    set_refuse_shared,
    take_back_grant,
)
from outpost.control_plane.api.deps import CallerDep, PoolsWriteDep, SessionDep
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.db.models import Pool, PoolGrant, Tenant
from outpost.control_plane.errors import ApiError
from outpost.control_plane.store.pools import default_pool, get_pool, list_grants, list_pools

router = APIRouter(prefix="/api/pools", tags=["pools"])


class PoolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PoolOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    tenant_id: str
    created_at: datetime


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The grantee tenant's id or name; ``"*"`` (platform operator only): every tenant.
    tenant: str = Field(min_length=1, max_length=200)


class GrantOut(BaseModel):
    id: str
    pool_id: str
    pool_name: str
    owner_tenant_id: str
    #: ``"*"``: every tenant.
    grantee_tenant_id: str
    direction: str  # "outgoing" (the caller owns the pool) | "incoming"
    granted_by: str
    created_at: datetime
    revoked_at: datetime | None


class SharingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refuse_shared_pools: bool = Field(strict=True)


class SharingOut(BaseModel):
    refuse_shared_pools: bool
    platform_operator: bool


def grant_out(grant: PoolGrant, pool: Pool, tenant_id: str) -> GrantOut:
    return GrantOut(
        id=grant.id,
        pool_id=pool.id,
        pool_name=pool.name,
        owner_tenant_id=pool.tenant_id,
        grantee_tenant_id=grant.grantee_tenant_id or EVERY_TENANT,
        direction="outgoing" if pool.tenant_id == tenant_id else "incoming",
        granted_by=grant.granted_by,
        created_at=grant.created_at,
        revoked_at=grant.revoked_at,
    )


async def _tenant(session: SessionDep, tenant_id: str) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:  # a key outlives nothing of its tenant (cascade); kept for the type
        raise ApiError.not_found("No such tenant.", code="tenant_not_found")
    return tenant


@router.get("")
async def get_pools(caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """The tenant's own pools (its default pool is created on first use)."""
    await default_pool(session, caller.tenant_id)
    rows = await list_pools(session, caller.tenant_id)
    await session.commit()
    return {
        "object": "list",
        "data": [PoolOut.model_validate(p).model_dump(mode="json") for p in rows],
    }


@router.post("", response_model=PoolOut, status_code=201)
async def create(body: PoolIn, admin: PoolsWriteDep, session: SessionDep) -> PoolOut:
    pool = await add_pool(
        session, admin.tenant_id, body.name, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    return PoolOut.model_validate(pool)


@router.get("/grants")
async def get_grants(
    caller: CallerDep, session: SessionDep, include_revoked: bool = False
) -> dict[str, Any]:
    """Grants of the tenant's pools (outgoing) and to it (incoming, including those to every
    tenant)."""
    tenant = await _tenant(session, caller.tenant_id)
    scope = None if tenant.platform_operator else caller.tenant_id
    rows = await list_grants(session, scope, include_revoked=include_revoked)
    return {
        "object": "list",
        "data": [grant_out(g, p, caller.tenant_id).model_dump(mode="json") for g, p in rows],
    }


@router.post("/{pool}/grants", response_model=GrantOut, status_code=201)
async def grant(pool: str, body: GrantIn, admin: PoolsWriteDep, session: SessionDep) -> GrantOut:
    """Let another tenant (or, for the platform operator, every tenant) route requests to this
    pool."""
    owner = await _tenant(session, admin.tenant_id)
    row = await find_pool(session, admin.tenant_id, pool)
    made = await give_grant(session, owner, row, body.tenant, actor=actor_for_key(admin.api_key_id))
    await session.commit()
    return grant_out(made, row, admin.tenant_id)


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
async def revoke(grant_id: str, admin: PoolsWriteDep, session: SessionDep) -> GrantOut:
    """Revoke a grant, from either side; requests stop going to the pool at once."""
    tenant = await _tenant(session, admin.tenant_id)
    made = await take_back_grant(session, tenant, grant_id, actor=actor_for_key(admin.api_key_id))
    pool = await get_pool(session, made.pool_id)
    await session.commit()
    assert pool is not None
    return grant_out(made, pool, admin.tenant_id)


@router.get("/sharing", response_model=SharingOut)
async def get_sharing(caller: CallerDep, session: SessionDep) -> SharingOut:
    tenant = await _tenant(session, caller.tenant_id)
    return SharingOut(
        refuse_shared_pools=tenant.refuse_shared_pools, platform_operator=tenant.platform_operator
    )


@router.put("/sharing", response_model=SharingOut)
async def put_sharing(body: SharingIn, admin: PoolsWriteDep, session: SessionDep) -> SharingOut:
    """Refuse every shared pool (only the tenant's own runners serve it), or accept grants again."""
    tenant = await _tenant(session, admin.tenant_id)
    await set_refuse_shared(
        session, tenant, body.refuse_shared_pools, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    return SharingOut(
        refuse_shared_pools=tenant.refuse_shared_pools, platform_operator=tenant.platform_operator
    )
