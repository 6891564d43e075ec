"""Bias-probe runs: start one (admin), import one, list, read, compare. Tenant-scoped."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from outpost.control_plane.api.deps import AppStateDep, CallerDep, ProbesRunDep, SessionDep
from outpost.control_plane.errors import ApiError
from outpost.control_plane.probes.jobs import ProbeJob, launch_probe, self_base_url
from outpost.control_plane.probes.schemas import (
    FairnessRunDetail,
    FairnessRunImport,
    FairnessRunIn,
    FairnessRunOut,
)
from outpost.control_plane.probes.service import (
    MAX_COMPARE_RUNS,
    compare_runs,
    import_probe_run,
    plan_probe,
    start_probe_run,
)
from outpost.control_plane.store.fairness import get_fairness_run, list_fairness_runs, run_document
from outpost.control_plane.store.pools import usable_pool_ids

router = APIRouter(prefix="/api/fairness", tags=["fairness"])


def _not_found(run_id: str) -> ApiError:
    return ApiError.not_found(
        f"No fairness run {run_id!r} in this tenant.", code="fairness_run_not_found"
    )


@router.post("/runs", status_code=202, response_model=FairnessRunDetail)
async def start_run(
    body: FairnessRunIn,
    request: Request,
    state: AppStateDep,
    admin: ProbesRunDep,
    session: SessionDep,
) -> FairnessRunDetail:
    plan = plan_probe(body, max_tokens_limit=state.settings.max_tokens_limit)
    pools = (
        admin.policy.pools
        if admin.policy is not None
        else await usable_pool_ids(session, admin.tenant_id)
    )
    served = state.hub.model_names(pools).get(
        body.model
    )  # only runners this tenant may use (issue 19)
    engine = served.engine if served is not None else None
    started = await start_probe_run(
        session,
        tenant_id=admin.tenant_id,
        started_by_key_id=admin.api_key_id,
        plan=plan,
        engine=engine,
    )
    await session.commit()
    base_url = self_base_url(state.settings.public_url, str(request.base_url))
    launch_probe(ProbeJob(db=state.db, started=started, base_url=base_url, engine=engine))
    return FairnessRunDetail.from_row(started.run)


@router.post("/runs/import", status_code=201, response_model=FairnessRunDetail)
async def import_run(
    body: FairnessRunImport, admin: ProbesRunDep, session: SessionDep
) -> FairnessRunDetail:
    try:
        _storable(body.model_dump_json())
    except ValueError:  # pydantic cannot serialise it (lone surrogates): neither can the database
        raise ApiError(400, "Text fields must be valid Unicode.", code="invalid_text") from None
    row = await import_probe_run(
        session, tenant_id=admin.tenant_id, actor_key_id=admin.api_key_id, body=body
    )
    await session.commit()
    return FairnessRunDetail.from_row(row)


@router.get("/runs")
async def list_runs(
    caller: CallerDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> dict[str, Any]:
    rows = await list_fairness_runs(session, caller.tenant_id, limit=limit)
    return {
        "object": "list",
        "data": [
            FairnessRunOut.build(row, summary).model_dump(mode="json") for row, summary in rows
        ],
    }


@router.get("/runs/{run_id}", response_model=FairnessRunDetail)
async def get_run(run_id: str, caller: CallerDep, session: SessionDep) -> FairnessRunDetail:
    row = await get_fairness_run(session, run_id, caller.tenant_id)
    if row is None:
        raise _not_found(run_id)
    return FairnessRunDetail.from_row(row)


@router.get("/runs/{run_id}/responses")
async def get_responses(run_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    row = await get_fairness_run(session, run_id, caller.tenant_id)
    if row is None:
        raise _not_found(run_id)
    return {"object": "list", "data": run_document(row).responses or []}


@router.get("/compare")
async def compare(
    caller: CallerDep,
    session: SessionDep,
    runs: Annotated[str, Query(max_length=MAX_COMPARE_RUNS * 41)],
) -> dict[str, Any]:
    ids = list(dict.fromkeys(part.strip() for part in runs.split(",") if part.strip()))
    if not 2 <= len(ids) <= MAX_COMPARE_RUNS:
        raise ApiError(
            400,
            f"Give 2 to {MAX_COMPARE_RUNS} distinct run ids: ?runs=a,b",
            code="invalid_request",
            param="runs",
        )
    comparison = await compare_runs(session, caller.tenant_id, ids)
    return {"runs": ids, **comparison.to_dict()}


def _storable(text: str) -> None:
    """Refuse text a database cannot store: NUL characters (PostgreSQL) and lone surrogates
    (UTF-8)."""
    if "\\u0000" in text:
        raise ApiError(400, "Text fields must not contain NUL characters.", code="invalid_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "Text fields must be valid Unicode (no lone surrogates).", code="invalid_text"
        ) from None
