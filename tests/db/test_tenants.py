"""Concurrent creation of the same tenant yields one row, on both databases."""

from __future__ import annotations

import asyncio

import pytest

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.store.tenants import get_or_create_tenant


@pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)
async def test_concurrent_get_or_create_returns_one_tenant(fresh_database_url: str) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)

    async def one() -> str:
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "acme")
            await session.commit()
            return tenant.id

    try:
        ids = await asyncio.gather(*[one() for _ in range(10)])
    finally:
        await db.dispose()
    assert len(set(ids)) == 1
