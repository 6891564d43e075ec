"""``control-plane budgets``: set, list and delete spending caps from the operator's shell.

Works on the database directly, like ``keys create``; the API
(``/api/budgets``) offers the same to admin keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from control_plane.audit import operator_actor, record_admin
from control_plane.db.engine import Database
from control_plane.db.migrate import upgrade_to_head
from control_plane.services.budgets import BudgetGuard
from control_plane.settings import Settings
from control_plane.store.budgets import delete_budget, get_budget, key_in_tenant, set_budget
from control_plane.store.tenants import get_tenant_by_name

__all__ = ["budgets_app"]

budgets_app = typer.Typer(help="Budgets: spending caps per tenant or API key (docs/cost.md).", no_args_is_help=True)
err = Console(stderr=True)


class Period(StrEnum):
    day = "day"
    week = "week"
    month = "month"


T = TypeVar("T")
TenantOpt = Annotated[str, typer.Option(help="Tenant name.")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(2)


async def _tenant_id(db: Database, name: str) -> str:
    async with db.session() as session:
        tenant = await get_tenant_by_name(session, name)
    if tenant is None:
        raise _fail(f"no tenant named {name!r}")
    return tenant.id


def _run(fn: Callable[[Database], Awaitable[T]]) -> T:
    settings = Settings()
    upgrade_to_head(settings.database_url)

    async def main() -> T:
        db = Database(settings.database_url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@budgets_app.command("set")
def set_(
    amount: Annotated[float, typer.Option(min=0, help="Dollars per period.")],
    tenant: TenantOpt = "default",
    key: Annotated[str | None, typer.Option(help="API key id (key_...); omit for the whole tenant.")] = None,
    period: Annotated[Period, typer.Option(help="Calendar period, UTC.")] = Period.month,
    soft: Annotated[float, typer.Option(min=0.01, max=1.0, help="Warn from this fraction of the amount.")] = 0.8,
) -> None:
    """Create or replace the budget of a tenant (or one of its keys) for a period."""

    async def go(db: Database) -> dict:
        tenant_id = await _tenant_id(db, tenant)
        async with db.session() as session:
            if key is not None and not await key_in_tenant(session, key, tenant_id):
                raise _fail(f"no API key {key!r} in tenant {tenant!r}")
            row, created = await set_budget(session, tenant_id=tenant_id, api_key_id=key, period=period.value,
                                            amount_usd=amount, soft_threshold=soft)
            await record_admin(session, actor=operator_actor(), action="budget.set", tenant_id=tenant_id,
                               target=row.id, details={"api_key_id": key, "period": period.value,
                                                       "amount_usd": f"{amount:.6f}", "soft_threshold": f"{soft:g}"})
            await session.commit()
        return {"id": row.id, "created": created, "tenant": tenant, "api_key_id": key, "period": period.value,
                "amount_usd": amount, "soft_threshold": soft}

    print(json.dumps(_run(go)))


@budgets_app.command("list")
def list_(tenant: TenantOpt = "default") -> None:
    """Every budget of the tenant with this period's spending (JSON lines)."""

    async def go(db: Database) -> list[dict]:
        verdict = await BudgetGuard(cache_s=0).report(db, await _tenant_id(db, tenant))
        return [{"id": s.budget_id, "scope": s.scope, "api_key_id": s.api_key_id, "period": s.period,
                 "amount_usd": s.amount_usd, "soft_threshold": s.soft_threshold, "spent_usd": round(s.spent_usd, 6),
                 "state": s.state.value, "resets_at": s.period_end.isoformat()} for s in verdict.statuses]

    for row in _run(go):
        print(json.dumps(row))


@budgets_app.command("delete")
def delete(budget_id: Annotated[str, typer.Argument(help="Budget id (bud_...).")],
           tenant: TenantOpt = "default") -> None:
    """Delete a budget."""

    async def go(db: Database) -> None:
        tenant_id = await _tenant_id(db, tenant)
        async with db.session() as session:
            row = await get_budget(session, budget_id, tenant_id)
            if row is None:
                raise _fail(f"no budget {budget_id!r} in tenant {tenant!r}")
            await delete_budget(session, row)
            await record_admin(session, actor=operator_actor(), action="budget.delete", tenant_id=tenant_id,
                               target=budget_id, details={"period": row.period})
            await session.commit()

    _run(go)
    err.print(f"deleted budget {budget_id}")
