"""Usage and cost: over time, and by key, model and runner, for a calendar period."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.console.charts import Series, bar_list, column_chart, money_fmt
from outpost.control_plane.console.deps import ViewUserDep, render
from outpost.control_plane.console.queries import key_names, runner_names, timeseries
from outpost.control_plane.services.cost import BudgetWindow
from outpost.control_plane.store.budgets import usage

router = APIRouter(include_in_schema=False)

BUCKETS = {"day": timedelta(hours=1), "week": timedelta(hours=6), "month": timedelta(days=1)}
LABEL_FORMATS = {"day": "%H:%M", "week": "%a %Hh", "month": "%b %d"}


@router.get("/usage")
async def usage_page(
    request: Request,
    state: AppStateDep,
    user: ViewUserDep,
    period: Annotated[Literal["day", "week", "month"], Query()] = "month",
) -> Response:
    now = state.admission.budgets.clock()
    window = BudgetWindow(period)
    start, end = window.start(now), window.end(now)
    async with state.db.session() as session:
        total = (await usage(session, user.tenant_id, start, end))[0]
        groups = {
            g: await usage(session, user.tenant_id, start, end, group_by=g)
            for g in ("key", "model", "runner")
        }
        buckets = await timeseries(
            session, user.tenant_id, start, min(end, now + timedelta(seconds=1)), BUCKETS[period]
        )
        keys = await key_names(session, user.tenant_id)
        runners = await runner_names(session, user.tenant_id)

    def name(group: str, ident: str | None) -> str:
        if ident is None:
            return "(none)"
        if group == "key":
            return keys.get(ident, ident)
        if group == "runner":
            return runners.get(ident, f"shared runner {ident[-6:]}")
        return ident

    charts = {}
    if total.requests:
        labels = [b.start.strftime(LABEL_FORMATS[period]) for b in buckets]
        charts["requests"] = column_chart(
            labels,
            [
                Series("Succeeded", [b.requests - b.errors for b in buckets], "s-1"),
                Series("Failed", [b.errors for b in buckets], "s-err"),
            ],
            title="Requests",
            integer=True,
            desc=f"Requests per bucket this {period}, succeeded and failed.",
        )
        charts["cost"] = column_chart(
            labels,
            [Series("Cost", [b.cost_usd for b in buckets], "s-3")],
            title="Cost",
            desc=f"Dollars per bucket this {period}.",
            fmt=money_fmt,
        )
        charts["tokens"] = column_chart(
            labels,
            [
                Series("Prompt tokens", [b.prompt_tokens for b in buckets], "s-2"),
                Series("Completion tokens", [b.completion_tokens for b in buckets], "s-1"),
            ],
            integer=True,
            title="Tokens",
            desc=f"Prompt and completion tokens per bucket this {period}.",
        )
        for group, label in (("key", "API key"), ("model", "model"), ("runner", "runner")):
            rows = groups[group]
            charts[f"cost_{group}"] = bar_list(
                [(name(group, r.group), r.cost_usd) for r in rows],
                title=f"Cost by {label}",
                fmt=money_fmt,
                css="s-3",
                desc=f"Dollars spent this {period} per {label}, largest first.",
            )
            charts[f"tokens_{group}"] = bar_list(
                [(name(group, r.group), r.prompt_tokens + r.completion_tokens) for r in rows],
                title=f"Tokens by {label}",
                css="s-1",
                fmt=lambda v: f"{v:,.0f}",
                desc=f"Prompt plus completion tokens this {period} per {label}, largest first.",
            )
    tables = {g: [(name(g, r.group), r) for r in rows] for g, rows in groups.items()}
    verdict = await state.admission.budgets.report(state.db, user.tenant_id)
    return render(
        request,
        "usage.html",
        user,
        active="/usage",
        period=period,
        start=start,
        end=end,
        total=total,
        charts=charts,
        tables=tables,
        budgets=verdict.statuses,
        key_names=keys,
    )
