"""Pool and grant writes, shared by the API, the CLI and the console: store calls plus their audit
events.

Each function takes a session and does not commit (the caller owns the
transaction). Refusals are :mod:`control_plane.domain_errors`; each door maps them.

Grants are audited on both sides: one event in the owner's tenant and one in
the grantee's, so each sees it in its own audit log. A grant to every tenant
(``"*"``) is the platform operator's alone (``tenants.platform_operator``).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import Pool, PoolGrant, Tenant
from outpost.control_plane.domain_errors import Conflict, Forbidden, Invalid, NotFound
from outpost.control_plane.store.pools import (
    create_pool,
    get_grant,
    get_pool,
    get_pool_by_name,
    grant_pool,
    revoke_grant,
)
from outpost.control_plane.store.tenants import get_tenant_by_name

__all__ = [
    "EVERY_TENANT",
    "add_pool",
    "find_pool",
    "give_grant",
    "set_refuse_shared",
    "take_back_grant",
]

#: Grantee meaning every tenant, present and future.
EVERY_TENANT = "*"


async def find_pool(session: AsyncSession, tenant_id: str, pool: str) -> Pool:
    """The tenant's pool with id or name ``pool``; 404 otherwise (another tenant's pool
    included)."""
    found = await get_pool(session, pool, tenant_id=tenant_id) or await get_pool_by_name(
        session, tenant_id, pool
    )
    if found is None:
        raise NotFound(f"No pool {pool!r} in this tenant.", code="pool_not_found")
    return found


async def add_pool(session: AsyncSession, tenant_id: str, name: str, *, actor: str) -> Pool:
    try:
        async with session.begin_nested():
            pool = await create_pool(session, tenant_id, name)
    except IntegrityError:
        raise Conflict(f"A pool named {name!r} already exists.", code="pool_exists") from None
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.POOL_CREATE,
        tenant_id=tenant_id,
        target=pool.id,
        details={"name": name},
    )
    return pool


async def give_grant(
    session: AsyncSession, owner: Tenant, pool: Pool, grantee: str, *, actor: str
) -> PoolGrant:
    """Let ``grantee`` (a tenant's id or name, or ``"*"``) route to ``pool`` of ``owner``."""
    if grantee == EVERY_TENANT:
        if not owner.platform_operator:
            raise Forbidden("Only the platform operator may grant a pool to every tenant.")
        grantee_id = None
    else:
        target = await session.get(Tenant, grantee) or await get_tenant_by_name(session, grantee)
        if target is None:
            raise NotFound(f"No tenant {grantee!r}.", code="tenant_not_found")
        grantee_id = target.id
        if grantee_id == owner.id:
            raise Invalid(
                "A tenant always uses its own pools; grant to another tenant.", code="grant_to_self"
            )
    grant = await grant_pool(session, pool, grantee_id, granted_by=actor)
    details = {
        "pool_id": pool.id,
        "pool": pool.name,
        "owner_tenant_id": owner.id,
        "grantee_tenant_id": grantee_id or EVERY_TENANT,
    }
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.POOL_GRANT,
        tenant_id=owner.id,
        target=grant.id,
        details=details,
    )
    if grantee_id is not None:  # the grantee sees it in its own log
        await record_admin(
            session,
            actor=actor,
            action=AuditAction.POOL_GRANT,
            tenant_id=grantee_id,
            target=grant.id,
            details=details,
        )
    return grant


async def take_back_grant(
    session: AsyncSession, tenant: Tenant, grant_id: str, *, actor: str
) -> PoolGrant:
    """Revoke a grant: by the pool's owner, by the grantee it names, or by the platform operator."""
    grant = await get_grant(
        session, grant_id, tenant_id=None if tenant.platform_operator else tenant.id
    )
    if grant is None:
        raise NotFound(f"No grant {grant_id!r} in this tenant.", code="grant_not_found")
    pool = await get_pool(session, grant.pool_id)
    assert pool is not None  # a grant's pool is deleted with it
    await revoke_grant(session, grant, revoked_by=actor)
    details = {
        "pool_id": pool.id,
        "pool": pool.name,
        "owner_tenant_id": pool.tenant_id,
        "grantee_tenant_id": grant.grantee_tenant_id or EVERY_TENANT,
    }
    for tenant_id in {pool.tenant_id, grant.grantee_tenant_id} - {None}:
        await record_admin(
            session,
            actor=actor,
            action=AuditAction.POOL_REVOKE_GRANT,
            tenant_id=tenant_id,
            target=grant.id,
            details=details,
        )
    return grant


async def set_refuse_shared(
    session: AsyncSession, tenant: Tenant, refuse: bool, *, actor: str
) -> None:
    """Refuse (or accept again) every pool other tenants grant to this one."""
    tenant.refuse_shared_pools = refuse
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.POOL_REFUSE_SHARED,
        tenant_id=tenant.id,
        target=tenant.id,
        details={"refuse_shared_pools": refuse},
    )
