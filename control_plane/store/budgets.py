"""Budgets and spending. Functions take a session, never commit, return rows or numbers.

Spending is always derived from ``request_records.cost_usd``: there is no
separate running total to drift from the records it summarises.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import ApiKey, Budget, RequestRecord, new_id

__all__ = [
    "UsageRow",
    "committed_ids",
    "delete_budget",
    "get_budget",
    "key_in_tenant",
    "list_budgets",
    "set_budget",
    "spend",
    "usage",
]


async def list_budgets(
    session: AsyncSession, tenant_id: str, api_key_id: str | None = None
) -> list[Budget]:
    """The tenant's budgets; with ``api_key_id``, only the tenant-wide ones and that key's."""
    stmt = select(Budget).where(Budget.tenant_id == tenant_id)
    if api_key_id is not None:
        stmt = stmt.where(or_(Budget.api_key_id.is_(None), Budget.api_key_id == api_key_id))
    stmt = stmt.order_by(
        Budget.api_key_id.is_not(None), Budget.api_key_id, Budget.period, Budget.id
    )
    return list((await session.execute(stmt)).scalars())


async def get_budget(session: AsyncSession, budget_id: str, tenant_id: str) -> Budget | None:
    stmt = select(Budget).where(Budget.id == budget_id, Budget.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def key_in_tenant(session: AsyncSession, api_key_id: str, tenant_id: str) -> bool:
    stmt = select(ApiKey.id).where(ApiKey.id == api_key_id, ApiKey.tenant_id == tenant_id)
    return (await session.execute(stmt)).first() is not None


async def set_budget(
    session: AsyncSession,
    *,
    tenant_id: str,
    api_key_id: str | None,
    period: str,
    amount_usd: float,
    soft_threshold: float,
) -> tuple[Budget, bool]:
    """Create or replace the budget of (tenant, key, period); returns ``(row, created)``.

    One budget per scope and period: "set" twice means "change it", the
    way an operator expects ``budgets set`` to behave.
    """
    key_match = (
        Budget.api_key_id.is_(None) if api_key_id is None else Budget.api_key_id == api_key_id
    )
    stmt = select(Budget).where(Budget.tenant_id == tenant_id, key_match, Budget.period == period)
    row = (await session.execute(stmt.with_for_update())).scalars().first()
    created = row is None
    if row is None:
        row = Budget(id=new_id("bud"), tenant_id=tenant_id, api_key_id=api_key_id, period=period)
        session.add(row)
    row.amount_usd, row.soft_threshold = amount_usd, soft_threshold
    await session.flush()
    return row, created


async def delete_budget(session: AsyncSession, budget: Budget) -> None:
    await session.delete(budget)
    await session.flush()


def _window(tenant_id: str, start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [
        RequestRecord.tenant_id == tenant_id,
        RequestRecord.created_at >= start,
        RequestRecord.created_at < end,
    ]


async def spend(
    session: AsyncSession, tenant_id: str, api_key_id: str | None, start: datetime, end: datetime
) -> float:
    """Dollars recorded for the tenant (or one of its keys) with ``created_at`` in ``[start,
    end)``."""
    stmt = select(func.coalesce(func.sum(RequestRecord.cost_usd), 0.0)).where(
        *_window(tenant_id, start, end)
    )
    if api_key_id is not None:
        stmt = stmt.where(RequestRecord.api_key_id == api_key_id)
    # coalesce() makes it 0.0 for no rows; the column's type still reads as optional.
    return float((await session.execute(stmt)).scalar_one() or 0.0)


async def committed_ids(session: AsyncSession, request_ids: Iterable[str]) -> set[str]:
    """Which of these request records exist (the rest are still being written)."""
    ids = list(request_ids)
    if not ids:
        return set()
    return set(
        (await session.execute(select(RequestRecord.id).where(RequestRecord.id.in_(ids)))).scalars()
    )


@dataclass(frozen=True)
class UsageRow:
    group: str | None  # the key, model or runner id; None for the total
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    engine_seconds: float


_GROUPS = {
    "key": RequestRecord.api_key_id,
    "model": RequestRecord.model,
    "runner": RequestRecord.runner_id,
}


async def usage(
    session: AsyncSession,
    tenant_id: str,
    start: datetime,
    end: datetime,
    *,
    group_by: str | None = None,
    api_key_id: str | None = None,
) -> list[UsageRow]:
    """Requests, tokens, engine time and dollars in ``[start, end)``, in total or per
    key/model/runner."""
    column = _GROUPS[group_by] if group_by is not None else None
    measures = (
        func.count(),
        func.coalesce(func.sum(case((RequestRecord.status != "ok", 1), else_=0)), 0),
        func.coalesce(func.sum(RequestRecord.prompt_tokens), 0),
        func.coalesce(func.sum(RequestRecord.completion_tokens), 0),
        func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
        func.coalesce(func.sum(RequestRecord.engine_share_s), 0.0),
    )
    stmt = select(*((column,) if column is not None else ()), *measures).where(
        *_window(tenant_id, start, end)
    )
    if api_key_id is not None:
        stmt = stmt.where(RequestRecord.api_key_id == api_key_id)
    if column is not None:
        stmt = stmt.group_by(column).order_by(func.sum(RequestRecord.cost_usd).desc(), column)
    rows = [
        tuple(r) if column is not None else (None, *r) for r in (await session.execute(stmt)).all()
    ]
    return [
        UsageRow(
            group=g,
            requests=int(n),
            errors=int(e),
            prompt_tokens=int(p),
            completion_tokens=int(c),
            cost_usd=float(usd),
            engine_seconds=float(sec),
        )
        for g, n, e, p, c, usd, sec in rows
    ]
