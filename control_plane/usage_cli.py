"""``control-plane usage``: a tenant's usage and spending, as ``GET /api/usage`` reports it.

Reads the database directly, like ``budgets list``; the same store query as the API.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from typing import Annotated, Any

import typer

from outpost.control_plane.cli_db import run_with_db, tenant_id_named
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.services.cost import BudgetWindow
from outpost.control_plane.store.budgets import UsageRow, usage

__all__ = ["usage_command"]


class Period(StrEnum):
    day = "day"
    week = "week"
    month = "month"


class Group(StrEnum):
    key = "key"
    model = "model"
    runner = "runner"


def _row(row: UsageRow) -> dict[str, Any]:
    out = asdict(row)
    out["cost_usd"] = round(out["cost_usd"], 6)
    out["engine_seconds"] = round(out["engine_seconds"], 3)
    return out


def _line(label: str, row: dict[str, Any]) -> str:
    # One line per row, key=value: readable at any terminal width and through a pipe.
    fields = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
    return f"{label}  " + "  ".join(f"{k}={row[k]}" for k in fields)


def usage_command(
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default",
    period: Annotated[Period, typer.Option(help="The current calendar period (UTC).")] = (
        Period.month
    ),
    by: Annotated[Group | None, typer.Option("--by", help="One line per key, model or runner.")] = (
        None
    ),
    as_json: Annotated[
        bool, typer.Option("--json", help="The GET /api/usage object, for scripts.")
    ] = False,
) -> None:
    """Requests, tokens and dollars of a tenant this period (as GET /api/usage)."""
    now = utcnow()
    window = BudgetWindow(period.value)
    start, end = window.start(now), window.end(now)

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            tenant_id = await tenant_id_named(session, tenant)
            total = (await usage(session, tenant_id, start, end))[0]
            out: dict[str, Any] = {
                "object": "usage",
                "tenant_id": tenant_id,
                "period": period.value,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "total": _row(total),
            }
            for group in Group:
                rows = await usage(session, tenant_id, start, end, group_by=group.value)
                out[f"by_{group.value}"] = [_row(r) for r in rows]
            return out

    report = run_with_db(go)
    if as_json:
        print(json.dumps(report))
        return
    print(f"{tenant} {period.value} {report['start']} .. {report['end']}")
    print(_line("total", report["total"]))
    if by is not None:
        for row in report[f"by_{by.value}"]:
            print(_line(str(row["group"] or "-"), row))
