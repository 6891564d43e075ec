"""``control-plane budgets``: set, list and delete spending caps from the operator's shell.

Works on the database directly, like ``keys create``; the API
(``/api/budgets``) offers the same to admin keys.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console

from outpost.control_plane.actions.budgets import put_budget, remove_budget
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db, tenant_id_named
from outpost.control_plane.db.engine import Database
from outpost.control_plane.services.budgets import BudgetGuard

__all__ = ["budgets_app"]

budgets_app = typer.Typer(
    help="Budgets: spending caps per tenant or API key (docs/cost.md).", no_args_is_help=True
)
err = Console(stderr=True)


class Period(StrEnum):
    day = "day"
    week = "week"
    month = "month"


TenantOpt = Annotated[str, typer.Option(help="Tenant name.")]


async def _tenant_id(db: Database, name: str) -> str:
    async with db.session() as session:
        return await tenant_id_named(session, name)


@budgets_app.command("set")
def set_(
    amount: Annotated[float, typer.Option(min=0, help="Dollars per period.")],
    tenant: TenantOpt = "default",
    key: Annotated[
        str | None, typer.Option(help="API key id (key_...); omit for the whole tenant.")
    ] = None,
    period: Annotated[Period, typer.Option(help="Calendar period, UTC.")] = Period.month,
    soft: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Warn from this fraction of the amount.")
    ] = 0.8,
) -> None:
    """Create or replace the budget of a tenant (or one of its keys) for a period."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            row, created = await put_budget(
                session,
                await tenant_id_named(session, tenant),
                actor=operator_actor(),
                api_key_id=key,
                period=period.value,
                amount_usd=amount,
                soft_threshold=soft,
            )
            await session.commit()
        return {
            "id": row.id,
            "created": created,
            "tenant": tenant,
            "api_key_id": key,
            "period": period.value,
            "amount_usd": amount,
            "soft_threshold": soft,
        }

    print(json.dumps(run_with_db(go)))


@budgets_app.command("list")
def list_(
    tenant: TenantOpt = "default",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per budget, for scripts.")
    ] = False,
) -> None:
    """Every budget of the tenant with this period's spending (--json: JSON lines)."""

    async def go(db: Database) -> list[dict[str, Any]]:
        verdict = await BudgetGuard(cache_s=0).report(db, await _tenant_id(db, tenant))
        return [
            {
                "id": s.budget_id,
                "scope": s.scope,
                "api_key_id": s.api_key_id,
                "period": s.period,
                "amount_usd": s.amount_usd,
                "soft_threshold": s.soft_threshold,
                "spent_usd": round(s.spent_usd, 6),
                "state": s.state.value,
                "resets_at": s.period_end.isoformat(),
            }
            for s in verdict.statuses
        ]

    for row in run_with_db(go):
        # One line per budget, readable at any width: no table to truncate (issue 26).
        print(
            json.dumps(row)
            if as_json
            else f"{row['id']}  " + "  ".join(f"{k}={row[k]}" for k in list(row)[1:])
        )


@budgets_app.command("delete")
def delete(
    budget_id: Annotated[str, typer.Argument(help="Budget id (bud_...).")],
    tenant: TenantOpt = "default",
) -> None:
    """Delete a budget."""

    async def go(db: Database) -> None:
        async with db.session() as session:
            await remove_budget(
                session, await tenant_id_named(session, tenant), budget_id, actor=operator_actor()
            )
            await session.commit()

    run_with_db(go)
    err.print(f"deleted budget {budget_id}")
