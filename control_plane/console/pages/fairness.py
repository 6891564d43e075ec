"""Fairness: tenant service fairness live; bias-probe runs with intervals and flags; runs side
by side."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.console.charts import IntervalRow, Series, bar_list, interval_plot
from outpost.control_plane.console.deps import (
    ConsoleUser,
    ProbesPostDep,
    ViewUserDep,
    not_found,
    render,
)
from outpost.control_plane.console.inference import console_caller
from outpost.control_plane.domain_errors import DomainError, NotFound
from outpost.control_plane.probes.jobs import ProbeJob, launch_probe, self_base_url
from outpost.control_plane.probes.report import FairnessReport
from outpost.control_plane.probes.schemas import FairnessRunDetail, FairnessRunIn, FairnessRunOut
from outpost.control_plane.probes.service import (
    MAX_COMPARE_RUNS,
    compare_runs,
    plan_probe,
    start_probe_run,
)
from outpost.control_plane.probes.suites import BUILTIN_SUITES_DIR
from outpost.control_plane.state import AppState
from outpost.control_plane.store.fairness import get_fairness_run, list_fairness_runs
from outpost.control_plane.store.pools import usable_pool_ids

router = APIRouter(include_in_schema=False)

STYLES = ("s-1", "s-3", "s-2", "s-4", "s-5", "s-6", "s-7", "s-8")


def _suites() -> list[str]:
    return sorted(p.stem for p in BUILTIN_SUITES_DIR.glob("*.json"))


def _live(state: AppState, user: ConsoleUser) -> dict[str, Any]:
    snap = state.admission.service_snapshot(user.tenant_id)
    chart = None
    if snap["tenants"]:
        chart = bar_list(
            [
                ("you" if t == user.tenant_id else t, v["normalized_service"])
                for t, v in snap["tenants"].items()
            ],
            title="Weighted service per tenant",
            desc="Input tokens plus twice the output tokens, divided by the tenant's weight, over "
            "the window. Equal bars among backlogged tenants mean a fair share.",
            css="s-2",
        )
    return {"snap": snap, "service_chart": chart}


async def _page(
    request: Request, state: AppState, user: ConsoleUser, *, status: int = 200, **extra: Any
) -> Response:
    async with state.db.session() as session:
        runs = [
            FairnessRunOut.build(row, summary)
            for row, summary in await list_fairness_runs(session, user.tenant_id, limit=50)
        ]
        pools = await usable_pool_ids(session, user.tenant_id)
    models = sorted(state.hub.model_names(pools))  # only what this tenant may call (issue 19)
    return render(
        request,
        "fairness.html",
        user,
        active="/fairness",
        status=status,
        runs=runs,
        models=models,
        suites=_suites(),
        max_compare=MAX_COMPARE_RUNS,
        **_live(state, user),
        **extra,
    )


@router.get("/fairness")
async def fairness_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return await _page(request, state, user)


@router.get("/fairness/_live")
async def fairness_live(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return render(
        request, "partials/fairness_live.html", user, active="/fairness", **_live(state, user)
    )


@router.post("/fairness/runs")
async def start_run(request: Request, state: AppStateDep, post: ProbesPostDep) -> Response:
    form = post.form
    try:
        per_group = (
            int(form["max_prompts_per_group"]) if form.get("max_prompts_per_group") else None
        )
        body = FairnessRunIn.model_validate(
            {
                "model": form.get("model", ""),
                "suite": form.get("suite", "default-v1"),
                "max_prompts_per_group": per_group,
                "sampling": {"max_tokens": int(form.get("max_tokens") or 256)},
            }
        )
        plan = plan_probe(body, max_tokens_limit=state.settings.max_tokens_limit)
    except DomainError as exc:
        return await _page(request, state, post.user, status=400, start_error=exc.message)
    except ValueError:  # pydantic's ValidationError included
        return await _page(
            request,
            state,
            post.user,
            status=400,
            start_error="Choose a model and a suite; counts are whole numbers.",
        )
    async with state.db.session() as session:
        served = state.hub.model_names(await usable_pool_ids(session, post.user.tenant_id)).get(
            body.model
        )
        engine = served.engine if served is not None else None
        caller, _ = await console_caller(session, post.user)
        started = await start_probe_run(
            session,
            tenant_id=post.user.tenant_id,
            started_by_key_id=caller.api_key_id,
            plan=plan,
            engine=engine,
        )
        await session.commit()
    launch_probe(
        ProbeJob(
            db=state.db,
            started=started,
            engine=engine,
            base_url=self_base_url(state.settings.public_url, str(request.base_url)),
        )
    )
    return RedirectResponse(
        f"/fairness/runs/{started.run.id}?notice=probe_started", status_code=303
    )


def _report_charts(report: FairnessReport) -> list[dict[str, Any]]:
    """Per attribute, one interval plot per outcome (the group the disparate-impact flag names
    in red)."""
    attributes = []
    for attribute, result in report.attributes.items():
        outcomes = []
        for name, outcome in result.outcomes.items():
            di = outcome.disparate_impact
            rows = [
                IntervalRow(
                    label=group,
                    value=g.value,
                    low=g.ci_low,
                    high=g.ci_high,
                    n=g.n,
                    flagged=bool(di and di.flagged and group == di.lowest_group),
                )
                for group, g in outcome.groups.items()
            ]
            binary = outcome.spec.kind.value == "binary"
            chart = interval_plot(
                rows,
                title=f"{name} by {attribute}",
                bounds=(0.0, 1.0) if binary else None,
                fmt=(lambda v: f"{v:.0%}") if binary else (lambda v: f"{v:.3g}"),
                show_title=False,
                desc=f"Estimate of {name} for each {attribute} group with its "
                f"{report.settings.confidence:.0%} interval.",
            )
            outcomes.append(
                {
                    "name": name,
                    "result": outcome,
                    "chart": chart,
                    "flagged": bool(di and di.flagged),
                }
            )
        attributes.append(
            {
                "name": attribute,
                "flagged": result.flagged,
                "responses": result.responses,
                "outcomes": outcomes,
            }
        )
    return attributes


@router.get("/fairness/runs/{run_id}")
async def run_page(
    run_id: str, request: Request, state: AppStateDep, user: ViewUserDep
) -> Response:
    async with state.db.session() as session:
        row = await get_fairness_run(session, run_id, user.tenant_id)
        if row is None:
            return not_found(request, user, f"No fairness run {run_id!r} in your tenant.")
        detail = FairnessRunDetail.from_row(row)
    report = FairnessReport.model_validate(detail.report) if detail.report else None
    return render(
        request,
        "fairness_run.html",
        user,
        active="/fairness",
        run=detail,
        report=report,
        sections=_report_charts(report) if report else [],
    )


@router.get("/fairness/compare")
async def compare_page(
    request: Request,
    state: AppStateDep,
    user: ViewUserDep,
    runs: Annotated[list[str], Query(max_length=MAX_COMPARE_RUNS)] = [],
) -> Response:  # noqa: B006
    ids = list(dict.fromkeys(r for r in runs if r))
    if not 2 <= len(ids) <= MAX_COMPARE_RUNS:
        return await _page(
            request,
            state,
            user,
            status=400,
            compare_error=f"Tick 2 to {MAX_COMPARE_RUNS} finished runs to compare them.",
        )
    async with state.db.session() as session:
        try:
            comparison = await compare_runs(session, user.tenant_id, ids)
        except NotFound as exc:
            return not_found(request, user, exc.message)
        except DomainError as exc:
            return await _page(request, state, user, status=400, compare_error=exc.message)
        details = [
            FairnessRunDetail.from_row(await get_fairness_run(session, i, user.tenant_id))
            for i in ids
        ]
    letters = [chr(ord("A") + k) for k in range(len(details))]
    legend = [
        Series(f"{letters[k]}: {d.model} ({d.engine or 'engine?'})", [], STYLES[k % len(STYLES)])
        for k, d in enumerate(details)
    ]
    charts = []
    for row in comparison.rows:
        known = [v for values in row.groups.values() for v in values if v is not None]
        binary = (
            bool(known)
            and all(0.0 <= v <= 1.0 for v in known)
            and row.di_ratio != [None] * len(details)
        )
        points = [
            IntervalRow(
                label=f"{group} · {letters[k]}",
                value=values[k],
                low=None,
                high=None,
                css=STYLES[k % len(STYLES)],
            )
            for group, values in row.groups.items()
            for k in range(len(details))
        ]
        charts.append(
            interval_plot(
                points,
                title=f"{row.outcome} by {row.attribute}",
                show_title=False,
                legend=legend,
                bounds=(0.0, 1.0) if binary else None,
                fmt=(lambda v: f"{v:.0%}") if binary else (lambda v: f"{v:.3g}"),
                desc=f"{row.outcome} per {row.attribute} group, one point per run.",
            )
        )
    return render(
        request,
        "fairness_compare.html",
        user,
        active="/fairness",
        comparison=comparison,
        runs=list(zip(letters, details, strict=True)),
        charts=charts,
    )
