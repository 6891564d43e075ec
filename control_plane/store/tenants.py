"""Tenant rows. Functions take a session, never commit, return rows or None."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Tenant, new_id

__all__ = ["get_or_create_tenant", "get_tenant_by_name"]


async def get_tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    return (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one_or_none()


async def get_or_create_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = await get_tenant_by_name(session, name)
    if tenant is not None:
        return tenant
    # Two processes may create the same tenant at once: the loser's insert
    # fails inside a savepoint and it reads the winner's row instead.
    try:
        async with session.begin_nested():
            tenant = Tenant(id=new_id("ten"), name=name)
            session.add(tenant)
    except IntegrityError:
        tenant = await get_tenant_by_name(session, name)
        if tenant is None:
            raise
    return tenant
