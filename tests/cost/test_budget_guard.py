"""The budget guard against a real database: spending is the records' sum, the
cache never hides this process's own spending, periods reset on the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import RequestRecord
from outpost.control_plane.services.budgets import WARNING_HEADER, BudgetGuard
from outpost.control_plane.services.cost import BudgetState
from outpost.control_plane.store.budgets import set_budget, usage
from outpost.control_plane.store.keys import create_api_key
from outpost.control_plane.store.tenants import get_or_create_tenant


class Clocks:
    def __init__(self) -> None:
        self.wall = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
        self.mono = 0.0


@pytest.fixture
async def db(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    upgrade_to_head(url)
    database = Database(url)
    yield database
    await database.dispose()


async def _setup(db: Database) -> tuple[str, str]:
    async with db.session() as s:
        tenant = await get_or_create_tenant(s, "t")
        key, _ = await create_api_key(s, tenant.id, "k")
        await set_budget(
            s,
            tenant_id=tenant.id,
            api_key_id=None,
            period="month",
            amount_usd=1.0,
            soft_threshold=0.5,
        )
        await s.commit()
        return tenant.id, key.id


async def _record(db: Database, rid: str, tenant: str, key: str, cost: float, at: datetime) -> None:
    async with db.session() as s:
        s.add(
            RequestRecord(
                id=rid,
                tenant_id=tenant,
                api_key_id=key,
                model="m",
                endpoint="/v1/chat/completions",
                status="ok",
                http_status=200,
                cost_usd=cost,
                created_at=at,
            )
        )
        await s.commit()


async def test_pending_costs_count_until_their_records_land(db: Database) -> None:
    tenant, key = await _setup(db)
    c = Clocks()
    guard = BudgetGuard(cache_s=10, clock=lambda: c.wall, monotonic=lambda: c.mono)
    assert (await guard.check(db, tenant, key)).statuses[0].spent_usd == 0
    # Finished, record not yet written: the cached sum (0) plus the pending cost.
    guard.add_spend("req_1", tenant, key, 0.6, c.wall)
    verdict = await guard.check(db, tenant, key)
    assert (
        verdict.statuses[0].spent_usd == pytest.approx(0.6)
        and verdict.statuses[0].state is BudgetState.SOFT
    )
    assert "tenant month budget 60% used" in verdict.headers()[WARNING_HEADER]
    # The record lands; a refresh must not count it twice.
    await _record(db, "req_1", tenant, key, 0.6, c.wall)
    c.mono += 11
    assert (await guard.check(db, tenant, key)).statuses[0].spent_usd == pytest.approx(0.6)
    # Also not while the cache is fresh and the record already committed before the refresh.
    guard.add_spend("req_2", tenant, key, 0.5, c.wall)
    await _record(db, "req_2", tenant, key, 0.5, c.wall)
    c.mono += 11
    verdict = await guard.check(db, tenant, key)
    assert verdict.statuses[0].spent_usd == pytest.approx(1.1) and verdict.exceeded is not None
    assert verdict.exceeded.retry_after_s(c.wall) == 3600  # 1 April 00:00 UTC


async def test_a_new_period_starts_from_zero_and_other_keys_do_not_count(db: Database) -> None:
    tenant, key = await _setup(db)
    c = Clocks()
    guard = BudgetGuard(cache_s=0, clock=lambda: c.wall, monotonic=lambda: c.mono)
    await _record(db, "req_1", tenant, key, 2.0, c.wall)
    assert (await guard.check(db, tenant, key)).exceeded is not None
    c.wall += timedelta(hours=2)  # April
    assert (await guard.check(db, tenant, key)).statuses[0].spent_usd == 0
    async with db.session() as s:
        april = await usage(
            s, tenant, datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
        )
        march = await usage(
            s,
            tenant,
            datetime(2026, 3, 1, tzinfo=UTC),
            datetime(2026, 4, 1, tzinfo=UTC),
            group_by="key",
        )
    assert april[0].requests == 0 and march[0].group == key and march[0].cost_usd == 2.0


async def test_budget_rows_are_cached_until_invalidated(db: Database) -> None:
    tenant, key = await _setup(db)
    c = Clocks()
    guard = BudgetGuard(cache_s=10, clock=lambda: c.wall, monotonic=lambda: c.mono)
    assert len((await guard.check(db, tenant, key)).statuses) == 1
    async with db.session() as s:
        await set_budget(
            s, tenant_id=tenant, api_key_id=key, period="day", amount_usd=0, soft_threshold=0.8
        )
        await s.commit()
    assert len((await guard.check(db, tenant, key)).statuses) == 1
    guard.invalidate(tenant)
    verdict = await guard.check(db, tenant, key)
    assert (
        len(verdict.statuses) == 2
        and verdict.exceeded is not None
        and verdict.exceeded.scope == "key"
    )
    assert (
        len((await guard.check(db, tenant, "key_other")).statuses) == 1
    )  # another key: only the tenant's
