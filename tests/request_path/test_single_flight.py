"""When a cached key or budget expires under load, the requests that need it at that moment share
one database read instead of each taking a pooled connection for the same query."""

from __future__ import annotations

import asyncio
from pathlib import Path

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.services.auth_cache import CachedKey, KeyCache, authenticate
from outpost.control_plane.services.budgets import BudgetGuard
from outpost.control_plane.store.budgets import set_budget
from outpost.control_plane.store.keys import create_api_key
from outpost.control_plane.store.tenants import get_or_create_tenant
from tests.request_path.conftest import StatementCounter


async def test_concurrent_misses_of_one_key_read_it_once() -> None:
    cache = KeyCache()
    reads = 0

    async def read() -> CachedKey:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        return CachedKey(
            tenant_id="t", api_key_id="k", scopes=frozenset({"inference"}), expires_at=None
        )

    keys = await asyncio.gather(*(cache.load("abc", "secret", read) for _ in range(20)))
    assert reads == 1 and all(k is keys[0] for k in keys)
    assert cache.get("abc", "secret") == keys[0]
    assert await cache.load("abc", "other secret", read) is not None and reads == 2, (
        "another secret reads again"
    )


async def test_concurrent_requests_share_the_key_and_budget_reads(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sf.db'}"
    upgrade_to_head(url)
    db = Database(url)
    counter = StatementCounter(db)
    try:
        async with db.session() as s:
            tenant = await get_or_create_tenant(s, "t")
            _, secret = await create_api_key(s, tenant.id, "k")
            await set_budget(
                s,
                tenant_id=tenant.id,
                api_key_id=None,
                period="month",
                amount_usd=1.0,
                soft_threshold=0.5,
            )
            await s.commit()
        counter.statements.clear()
        cache, guard = KeyCache(), BudgetGuard(cache_s=5)

        async def request() -> None:
            caller = await authenticate(db, cache, secret)
            assert caller is not None
            await guard.check(db, caller.tenant_id, caller.api_key_id)

        await asyncio.gather(*(request() for _ in range(30)))
        assert counter.count("FROM api_keys") == 2, (
            "the key and its policy, read once for 30 requests"
        )
        assert counter.count("FROM budgets") == 1
        assert (
            counter.count("FROM request_records") <= 2
        )  # the period's sum (and pending ids, if any)
    finally:
        counter.close()
        await db.dispose()
