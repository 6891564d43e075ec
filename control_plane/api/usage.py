"""Usage and spending of the caller's tenant over a period, in total and per key, model and
runner."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from outpost.control_plane.api.deps import AppStateDep, CallerDep, SessionDep
from outpost.control_plane.errors import ApiError
from outpost.control_plane.permissions import Permission
from outpost.control_plane.services.cost import BudgetWindow
from outpost.control_plane.store.budgets import UsageRow, usage

__all__ = ["router"]

router = APIRouter(prefix="/api/usage", tags=["usage"])

_GROUP_NAMES = {"key": "api_key_id", "model": "model", "runner": "runner_id"}


def _row(row: UsageRow, group: str | None) -> dict[str, Any]:
    out = asdict(row)
    label = out.pop("group")
    return {_GROUP_NAMES[group]: label, **out} if group is not None else out


@router.get("")
async def get_usage(
    state: AppStateDep,
    caller: CallerDep,
    session: SessionDep,
    period: Annotated[
        Literal["day", "week", "month"], Query(description="The current calendar period (UTC).")
    ] = "month",
    start: Annotated[
        datetime | None, Query(description="Explicit start (ISO 8601); overrides period.")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="Explicit end, exclusive; default now.")
    ] = None,
) -> dict[str, Any]:
    """An admin key sees the whole tenant; any other key sees only its own requests."""
    now = state.admission.budgets.clock()
    if start is None:
        window = BudgetWindow(period)
        start, end = window.start(now), end or window.end(now)
    else:
        period = None  # type: ignore[assignment]  # an explicit range has no budget period
        end = end or now
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ApiError(400, "end must be after start.", code="invalid_range", param="end")
    key = None if caller.can(Permission.VIEW) else caller.api_key_id
    total = (await usage(session, caller.tenant_id, start, end, api_key_id=key))[0]
    out: dict[str, Any] = {
        "object": "usage",
        "tenant_id": caller.tenant_id,
        "api_key_id": key,
        "period": period,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "total": _row(total, None),
    }
    for group in ("key", "model", "runner"):
        rows = await usage(session, caller.tenant_id, start, end, group_by=group, api_key_id=key)
        out[f"by_{group}"] = [_row(r, group) for r in rows]
    return out


def _utc(ts: datetime) -> datetime:
    # A time without a zone is taken as UTC, as every stored time is.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
