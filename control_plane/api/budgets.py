"""Budgets per tenant and per API key: list with current spending (any key), set and delete
(admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.actions.budgets import put_budget, remove_budget
from outpost.control_plane.api.deps import AppStateDep, CallerDep, LimitsWriteDep, SessionDep
from outpost.control_plane.audit import actor_for_key
from outpost.control_plane.permissions import Permission
from outpost.control_plane.services.budgets import BudgetStatus

__all__ = ["BudgetIn", "BudgetOut", "router"]

router = APIRouter(prefix="/api/budgets", tags=["budgets"])


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key_id: str | None = Field(
        default=None, max_length=40, description="Omit for a tenant-wide budget."
    )
    period: Literal["day", "week", "month"] = "month"
    amount_usd: float = Field(ge=0, le=1e9)
    soft_threshold: float = Field(default=0.8, gt=0, le=1)


class BudgetOut(BaseModel):
    id: str
    scope: Literal["tenant", "key"]
    api_key_id: str | None
    period: str
    amount_usd: float
    soft_threshold: float
    spent_usd: float
    state: str  # ok | soft | exceeded
    period_start: datetime
    period_end: datetime

    @classmethod
    def from_status(cls, s: BudgetStatus) -> BudgetOut:
        return cls(
            id=s.budget_id,
            scope=s.scope,
            api_key_id=s.api_key_id,
            period=s.period,
            amount_usd=s.amount_usd,
            soft_threshold=s.soft_threshold,
            spent_usd=s.spent_usd,
            state=s.state.value,
            period_start=s.period_start,
            period_end=s.period_end,
        )


@router.get("")
async def list_(state: AppStateDep, caller: CallerDep) -> dict[str, Any]:
    """The tenant's budgets with this period's spending; a non-admin key sees its own and the
    tenant's."""
    guard = state.admission.budgets
    if caller.can(Permission.VIEW):
        verdict = await guard.report(state.db, caller.tenant_id)
    else:
        guard.invalidate(caller.tenant_id)
        verdict = await guard.check(state.db, caller.tenant_id, caller.api_key_id)
    return {
        "object": "list",
        "data": [BudgetOut.from_status(s).model_dump(mode="json") for s in verdict.statuses],
    }


@router.post(
    "",
    status_code=201,
    response_model=BudgetOut,
    responses={200: {"model": BudgetOut, "description": "An existing budget was replaced."}},
)
async def set_(
    body: BudgetIn,
    response: Response,
    state: AppStateDep,
    admin: LimitsWriteDep,
    session: SessionDep,
) -> BudgetOut:
    """Create or replace the budget of (tenant or key, period)."""
    row, created = await put_budget(
        session,
        admin.tenant_id,
        actor=actor_for_key(admin.api_key_id),
        api_key_id=body.api_key_id,
        period=body.period,
        amount_usd=body.amount_usd,
        soft_threshold=body.soft_threshold,
    )
    await session.commit()
    if not created:
        response.status_code = 200
    verdict = await state.admission.budgets.report(state.db, admin.tenant_id)
    return BudgetOut.from_status(next(s for s in verdict.statuses if s.budget_id == row.id))


@router.delete("/{budget_id}", status_code=204)
async def delete(
    budget_id: str, state: AppStateDep, admin: LimitsWriteDep, session: SessionDep
) -> Response:
    await remove_budget(session, admin.tenant_id, budget_id, actor=actor_for_key(admin.api_key_id))
    await session.commit()
    state.admission.budgets.invalidate(admin.tenant_id)
    return Response(status_code=204)
