"""Budgets of a tenant or of one of its keys: set (create or replace) and delete."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import Budget
from outpost.control_plane.domain_errors import Invalid, NotFound
from outpost.control_plane.store.budgets import delete_budget, get_budget, key_in_tenant, set_budget

__all__ = ["PERIODS", "put_budget", "remove_budget"]

PERIODS = ("day", "week", "month")


async def put_budget(
    session: AsyncSession,
    tenant_id: str,
    *,
    actor: str,
    api_key_id: str | None,
    period: str,
    amount_usd: float,
    soft_threshold: float,
) -> tuple[Budget, bool]:
    """Create or replace the budget of (tenant or key, period); returns ``(row, created)``."""
    if period not in PERIODS:
        raise Invalid(f"period must be one of {', '.join(PERIODS)}, not {period!r}", param="period")
    if not 0 <= amount_usd <= 1e9:
        raise Invalid("amount must be between 0 and 1e9 dollars", param="amount_usd")
    if not 0 < soft_threshold <= 1:
        raise Invalid("soft threshold must be in (0, 1]", param="soft_threshold")
    if api_key_id is not None and not await key_in_tenant(session, api_key_id, tenant_id):
        raise NotFound(
            f"No API key {api_key_id!r} in this tenant.",
            code="api_key_not_found",
            param="api_key_id",
        )
    row, created = await set_budget(
        session,
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        period=period,
        amount_usd=amount_usd,
        soft_threshold=soft_threshold,
    )
    # The audit chain refuses floats (canonical JSON): amounts go in as decimal strings.
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.BUDGET_SET,
        tenant_id=tenant_id,
        target=row.id,
        details={
            "api_key_id": api_key_id,
            "period": period,
            "amount_usd": f"{amount_usd:.6f}",
            "soft_threshold": f"{soft_threshold:g}",
        },
    )
    return row, created


async def remove_budget(
    session: AsyncSession, tenant_id: str, budget_id: str, *, actor: str
) -> Budget:
    row = await get_budget(session, budget_id, tenant_id)
    if row is None:
        raise NotFound(f"No budget {budget_id!r} in this tenant.", code="budget_not_found")
    await delete_budget(session, row)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.BUDGET_DELETE,
        tenant_id=tenant_id,
        target=budget_id,
        details={"period": row.period},
    )
    return row
