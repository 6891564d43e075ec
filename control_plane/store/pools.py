"""Runner pools and the grants that let other tenants route to them.

Functions take a session, never commit, and return rows, ``None`` or a bool.
Which pools a tenant may use (:func:`usable_pool_ids`) is what routing obeys:
its own pools, plus those granted to it or to every tenant, unless it refuses
shared pools (docs/security.md).
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Pool, PoolGrant, Tenant, new_id, utcnow

__all__ = [
    "DEFAULT_POOL",
    "create_pool",
    "default_pool",
    "get_grant",
    "get_pool",
    "get_pool_by_name",
    "grant_pool",
    "list_grants",
    "list_pools",
    "revoke_grant",
    "usable_pool_ids",
]

DEFAULT_POOL = "default"


async def get_pool(
    session: AsyncSession, pool_id: str, tenant_id: str | None = None
) -> Pool | None:
    stmt = select(Pool).where(Pool.id == pool_id)
    if tenant_id is not None:
        stmt = stmt.where(Pool.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_pool_by_name(session: AsyncSession, tenant_id: str, name: str) -> Pool | None:
    stmt = select(Pool).where(Pool.tenant_id == tenant_id, Pool.name == name)
    return (await session.execute(stmt)).scalar_one_or_none()


async def create_pool(session: AsyncSession, tenant_id: str, name: str) -> Pool:
    """A new pool; raises ``IntegrityError`` when the tenant has one of that name."""
    pool = Pool(id=new_id("pool"), tenant_id=tenant_id, name=name)
    session.add(pool)
    await session.flush()
    return pool


async def default_pool(session: AsyncSession, tenant_id: str) -> Pool:
    """The tenant's ``default`` pool, created on first use (two processes may race: the loser
    reads)."""
    pool = await get_pool_by_name(session, tenant_id, DEFAULT_POOL)
    if pool is not None:
        return pool
    try:
        async with session.begin_nested():
            pool = Pool(id=new_id("pool"), tenant_id=tenant_id, name=DEFAULT_POOL)
            session.add(pool)
    except IntegrityError:
        pool = await get_pool_by_name(session, tenant_id, DEFAULT_POOL)
        if pool is None:
            raise
    return pool


async def list_pools(session: AsyncSession, tenant_id: str) -> list[Pool]:
    stmt = select(Pool).where(Pool.tenant_id == tenant_id).order_by(Pool.created_at, Pool.name)
    return list((await session.execute(stmt)).scalars())


async def grant_pool(
    session: AsyncSession, pool: Pool, grantee_tenant_id: str | None, granted_by: str
) -> PoolGrant:
    """Let ``grantee_tenant_id`` (``None``: every tenant) route to ``pool``; an active grant is
    reused."""
    stmt = select(PoolGrant).where(PoolGrant.pool_id == pool.id, PoolGrant.revoked_at.is_(None))
    stmt = stmt.where(
        PoolGrant.grantee_tenant_id.is_(None)
        if grantee_tenant_id is None
        else PoolGrant.grantee_tenant_id == grantee_tenant_id
    )
    if (active := (await session.execute(stmt)).scalars().first()) is not None:
        return active
    grant = PoolGrant(
        id=new_id("grant"),
        pool_id=pool.id,
        grantee_tenant_id=grantee_tenant_id,
        granted_by=granted_by,
    )
    session.add(grant)
    await session.flush()
    return grant


async def get_grant(
    session: AsyncSession, grant_id: str, tenant_id: str | None = None
) -> PoolGrant | None:
    """A grant by id; with ``tenant_id``, only if that tenant owns the pool or is the grantee."""
    stmt = (
        select(PoolGrant).join(Pool, Pool.id == PoolGrant.pool_id).where(PoolGrant.id == grant_id)
    )
    if tenant_id is not None:
        stmt = stmt.where(
            or_(Pool.tenant_id == tenant_id, PoolGrant.grantee_tenant_id == tenant_id)
        )
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_grants(
    session: AsyncSession, tenant_id: str | None, *, include_revoked: bool = False
) -> list[tuple[PoolGrant, Pool]]:
    """Grants of the tenant's pools and grants to it (to every tenant too); ``None``: all grants."""
    stmt = select(PoolGrant, Pool).join(Pool, Pool.id == PoolGrant.pool_id)
    if tenant_id is not None:
        stmt = stmt.where(
            or_(
                Pool.tenant_id == tenant_id,
                PoolGrant.grantee_tenant_id == tenant_id,
                PoolGrant.grantee_tenant_id.is_(None),
            )
        )
    if not include_revoked:
        stmt = stmt.where(PoolGrant.revoked_at.is_(None))
    rows = (await session.execute(stmt.order_by(PoolGrant.created_at, PoolGrant.id))).all()
    return [(g, p) for g, p in rows]


async def revoke_grant(session: AsyncSession, grant: PoolGrant, revoked_by: str) -> None:
    if grant.revoked_at is None:
        grant.revoked_at, grant.revoked_by = utcnow(), revoked_by
        await session.flush()


async def usable_pool_ids(session: AsyncSession, tenant_id: str) -> frozenset[str]:
    """The pools ``tenant_id``'s requests may be routed to: its own, then granted ones unless it
    refuses them."""
    own = (
        (await session.execute(select(Pool.id).where(Pool.tenant_id == tenant_id))).scalars().all()
    )
    refuses = (
        await session.execute(select(Tenant.refuse_shared_pools).where(Tenant.id == tenant_id))
    ).scalar()
    if refuses:
        return frozenset(own)
    granted = (
        (
            await session.execute(
                select(PoolGrant.pool_id).where(
                    PoolGrant.revoked_at.is_(None),
                    or_(
                        PoolGrant.grantee_tenant_id == tenant_id,
                        PoolGrant.grantee_tenant_id.is_(None),
                    ),
                )
            )
        )
        .scalars()
        .all()
    )
    return frozenset((*own, *granted))
