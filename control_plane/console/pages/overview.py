"""Overview: runners up, requests, tokens, cost and errors over the last 24 hours."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.console.charts import Series, column_chart, money_fmt
from outpost.control_plane.console.deps import UserDep, render
from outpost.control_plane.console.pages.runners import runner_views
from outpost.control_plane.console.queries import (
    key_names,
    recent_requests,
    runner_names,
    timeseries,
    window_stats,
)
from outpost.control_plane.permissions import Permission

router = APIRouter(include_in_schema=False)

WINDOW = timedelta(hours=24)
BUCKET = timedelta(hours=1)


@router.get("/")
async def overview(request: Request, state: AppStateDep, user: UserDep) -> Response:
    if not user.can(Permission.VIEW):  # an auditor's console is the audit log
        return RedirectResponse("/audit", status_code=303)
    now = state.admission.budgets.clock()
    start = now - WINDOW
    async with state.db.session() as session:
        runners = await runner_views(state, session, user.tenant_id)
        stats = await window_stats(session, user.tenant_id, start, now)
        buckets = await timeseries(
            session, user.tenant_id, start, now + timedelta(seconds=1), BUCKET
        )
        recent = await recent_requests(session, user.tenant_id, 10)
        keys = await key_names(session, user.tenant_id)
        names = await runner_names(session, user.tenant_id)
    labels = [b.start.strftime("%H:%M") for b in buckets]
    charts = []
    if stats.requests:
        charts = [
            column_chart(
                labels,
                [
                    Series("Succeeded", [b.requests - b.errors for b in buckets], "s-1"),
                    Series("Failed", [b.errors for b in buckets], "s-err"),
                ],
                title="Requests per hour",
                integer=True,
                desc="Requests per hour over the last 24 hours, split into succeeded and failed.",
            ),
            column_chart(
                labels,
                [
                    Series("Prompt tokens", [b.prompt_tokens for b in buckets], "s-2"),
                    Series("Completion tokens", [b.completion_tokens for b in buckets], "s-1"),
                ],
                integer=True,
                title="Tokens per hour",
                desc="Prompt and completion tokens per hour, last 24 hours.",
            ),
            column_chart(
                labels,
                [Series("Cost", [b.cost_usd for b in buckets], "s-3")],
                title="Cost per hour",
                desc="Dollars of runner time per hour, last 24 hours.",
                fmt=money_fmt,
            ),
        ]
    up = sum(1 for r in runners if r.status == "connected")
    active = sum(1 for r in runners if r.status != "revoked")
    return render(
        request,
        "overview.html",
        user,
        active="/",
        runners=runners,
        up=up,
        enrolled=active,
        stats=stats,
        charts=charts,
        recent=recent,
        key_names=keys,
        runner_names=names,
    )
