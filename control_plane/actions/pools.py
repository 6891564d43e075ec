"""Pool and grant writes, shared by the API, the CLI and the console: store calls plus their audit events.

Each function takes a session and does not commit (the caller owns the
transaction). Refusals are :class:`~control_plane.errors.ApiError` with the
status the API answers; the CLI prints their message.

Grants are audited on both sides: one event in the owner's tenant and one in
the grantee's, so each sees it in its own audit log. A grant to every tenant
(``"*"``) is the platform operator's alone (``tenants.platform_operator``).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import record_admin
from control_plane.db.models import Pool, PoolGrant, Runner, Tenant
from control_plane.errors import ApiError
from control_plane.store.changes import mark_key_changed
from control_plane.store.pools import (
    create_pool,
    get_grant,
    get_pool,
    get_pool_by_name,
    grant_pool,
    revoke_grant,
)
from control_plane.store.runners import update_runner
from control_plane.store.tenants import get_tenant_by_name

__all__ = [
    "EVERY_TENANT",
    "add_pool",
    "find_pool",
    "give_grant",
    "set_refuse_shared",
    "set_runner_settings",
    "take_back_grant",
]

#: Grantee meaning every tenant, present and future.
EVERY_TENANT = "*"


async def find_pool(session: AsyncSession, tenant_id: str, pool: str) -> Pool:
    """The tenant's pool with id or name ``pool``; 404 otherwise (another tenant's pool included)."""
    found = await get_pool(session, pool, tenant_id=tenant_id) or await get_pool_by_name(session, tenant_id, pool)
    if found is None:
        raise ApiError.not_found(f"No pool {pool!r} in this tenant.", code="pool_not_found")
    return found


async def add_pool(session: AsyncSession, tenant_id: str, name: str, *, actor: str) -> Pool:
    try:
        async with session.begin_nested():
            pool = await create_pool(session, tenant_id, name)
    except IntegrityError:
        raise ApiError(409, f"A pool named {name!r} already exists.", code="pool_exists") from None
    await record_admin(session, actor=actor, action="pool.create", tenant_id=tenant_id, target=pool.id,
                       details={"name": name})
    return pool


async def give_grant(session: AsyncSession, owner: Tenant, pool: Pool, grantee: str, *, actor: str) -> PoolGrant:
    """Let ``grantee`` (a tenant's id or name, or ``"*"``) route to ``pool`` of ``owner``."""
    if grantee == EVERY_TENANT:
        if not owner.platform_operator:
            raise ApiError.forbidden("Only the platform operator may grant a pool to every tenant.")
        grantee_id = None
    else:
        target = await session.get(Tenant, grantee) or await get_tenant_by_name(session, grantee)
        if target is None:
            raise ApiError.not_found(f"No tenant {grantee!r}.", code="tenant_not_found")
        grantee_id = target.id
        if grantee_id == owner.id:
            raise ApiError(400, "A tenant always uses its own pools; grant to another tenant.",
                           code="grant_to_self")
    grant = await grant_pool(session, pool, grantee_id, granted_by=actor)
    details = {"pool_id": pool.id, "pool": pool.name, "owner_tenant_id": owner.id,
               "grantee_tenant_id": grantee_id or EVERY_TENANT}
    await record_admin(session, actor=actor, action="pool.grant", tenant_id=owner.id, target=grant.id,
                       details=details)
    if grantee_id is not None:  # the grantee sees it in its own log
        await record_admin(session, actor=actor, action="pool.grant", tenant_id=grantee_id, target=grant.id,
                           details=details)
    return grant


async def take_back_grant(session: AsyncSession, tenant: Tenant, grant_id: str, *, actor: str) -> PoolGrant:
    """Revoke a grant: by the pool's owner, by the grantee it names, or by the platform operator."""
    grant = await get_grant(session, grant_id, tenant_id=None if tenant.platform_operator else tenant.id)
    if grant is None:
        raise ApiError.not_found(f"No grant {grant_id!r} in this tenant.", code="grant_not_found")
    pool = await get_pool(session, grant.pool_id)
    assert pool is not None  # a grant's pool is deleted with it
    await revoke_grant(session, grant, revoked_by=actor)
    details = {"pool_id": pool.id, "pool": pool.name, "owner_tenant_id": pool.tenant_id,
               "grantee_tenant_id": grant.grantee_tenant_id or EVERY_TENANT}
    for tenant_id in {pool.tenant_id, grant.grantee_tenant_id} - {None}:
        await record_admin(session, actor=actor, action="pool.revoke_grant", tenant_id=tenant_id,
                           target=grant.id, details=details)
    return grant


async def set_refuse_shared(session: AsyncSession, tenant: Tenant, refuse: bool, *, actor: str) -> None:
    """Refuse (or accept again) every pool other tenants grant to this one."""
    tenant.refuse_shared_pools = refuse
    await session.flush()
    await record_admin(session, actor=actor, action="pool.refuse_shared", tenant_id=tenant.id, target=tenant.id,
                       details={"refuse_shared_pools": refuse})


async def set_runner_settings(session: AsyncSession, runner: Runner, *, actor: str,
                              labels: dict[str, str] | None = None, usd_per_hour: float | None = None,
                              pool: str | None = None) -> dict[str, object]:
    """The owner's decisions about a runner: residency labels, price (0-1000 $/h), pool (id or name).

    Audited as ``runner.update``; on commit every replica re-reads the runner's row
    (``services.owner_settings``). Returns the changes as audited.
    """
    pool_id = (await find_pool(session, runner.tenant_id, pool)).id if pool is not None else None
    try:
        await update_runner(session, runner, labels=labels, usd_per_hour=usd_per_hour, pool_id=pool_id)
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_request", param="usd_per_hour") from None
    changes = {k: v for k, v in (("labels", labels), ("usd_per_hour", usd_per_hour), ("pool_id", pool_id))
               if v is not None}
    await record_admin(session, actor=actor, action="runner.update", tenant_id=runner.tenant_id, target=runner.id,
                       details={"name": runner.name, **changes})
    mark_key_changed(session, tenant_ids=[runner.tenant_id])
    return changes
