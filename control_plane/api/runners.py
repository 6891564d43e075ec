"""Runner enrollment (token → identity key registration) and management."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from outpost.control_plane.actions import runners as runner_actions
from outpost.control_plane.api.deps import (
    AppStateDep,
    CallerDep,
    RunnersWriteDep,
    SessionDep,
    bearer_token,
)
from outpost.control_plane.audit import actor_for_key, record_runner_event
from outpost.control_plane.db.models import Runner
from outpost.control_plane.errors import ApiError
from outpost.control_plane.routing.load import runner_status
from outpost.control_plane.schemas import (
    EngineSlotsOut,
    RegisterRunnerIn,
    RegisterRunnerOut,
    RunnerOut,
)
from outpost.control_plane.services.cost import hourly_rate
from outpost.control_plane.services.owner_settings import apply_owner_settings
from outpost.control_plane.store.keys import consume_enrollment_token
from outpost.control_plane.store.pools import default_pool
from outpost.control_plane.store.runners import (
    MAX_USD_PER_HOUR,
    create_runner,
    list_runners,
)
from outpost.control_plane.tls import token_with_pin
from outpost.sdk.protocol import CloseCode

router = APIRouter(prefix="/api/runners", tags=["runners"])


@router.post("/register", response_model=RegisterRunnerOut, status_code=201)
async def register_runner(
    body: RegisterRunnerIn, request: Request, session: SessionDep
) -> RegisterRunnerOut:
    token = bearer_token(request)
    if token is None:
        raise _token_refused("Missing enrollment token.")
    enrollment = await consume_enrollment_token(session, token)
    if enrollment is None:
        raise _token_refused("Enrollment token is invalid, expired or already used.")
    name = enrollment.runner_name  # read now: a failed flush expires the row
    tenant_id, labels = enrollment.tenant_id, dict(enrollment.labels or {})
    # The pool the enrolling admin chose, else the tenant's default: never one the runner names.
    pool_id = enrollment.pool_id or (await default_pool(session, tenant_id)).id
    try:
        runner = await create_runner(
            session,
            tenant_id=tenant_id,
            pool_id=pool_id,
            name=name,
            identity_public_key=body.identity_public_key,
            hpke_public_key=body.hpke_public_key,
            hpke_key_signature=body.hpke_key_signature,
            labels=labels,
        )
    except IntegrityError:
        raise ApiError(
            409, f"A runner named {name!r} already exists.", code="runner_exists"
        ) from None
    await record_runner_event(
        session,
        event="enroll",
        runner_id=runner.id,
        tenant_id=runner.tenant_id,
        actor=f"enrollment_token:{enrollment.id}",
        details={"name": runner.name},
    )
    await session.commit()
    return RegisterRunnerOut(runner_id=runner.id, tenant_id=runner.tenant_id, name=runner.name)


def _token_refused(message: str) -> ApiError:
    # One code for malformed, unknown, wrong-secret, expired and used tokens: no
    # oracle for which tokens exist or were used. Never ``invalid_api_key``:
    # the caller holds (or claims) an enrollment token, not an API key.
    return ApiError(
        401, message, code="invalid_enrollment_token", headers={"WWW-Authenticate": "Bearer"}
    )


Labels = dict[
    Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=256)]
]


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    #: A pool of the caller's tenant (id or name); default: its ``default`` pool.
    pool: str | None = Field(default=None, min_length=1, max_length=200)
    #: Residency labels the runner gets (routing obeys these, never the runner's own claims).
    labels: Labels = Field(default_factory=dict, max_length=64)


class RunnerUpdateIn(BaseModel):
    """What only the owner decides about a runner; each field left out is unchanged."""

    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = Field(default=None, max_length=64)
    # Strict: no "5" or true; finite (allow_inf_nan) and within the cap of store.runners.
    usd_per_hour: float | None = Field(
        default=None, ge=0, le=MAX_USD_PER_HOUR, strict=True, allow_inf_nan=False
    )
    #: Move the runner to another pool of its tenant (id or name).
    pool: str | None = Field(default=None, min_length=1, max_length=200)


class EnrollOut(BaseModel):
    token: str
    runner_name: str
    expires_at: datetime


@router.post("/enroll", response_model=EnrollOut, status_code=201)
async def create_enrollment(
    body: EnrollIn, state: AppStateDep, admin: RunnersWriteDep, session: SessionDep
) -> EnrollOut:
    """A one-time, expiring enrollment token for a runner named ``name``; the secret is shown
    once."""
    # The caller's pool by id or name (404 for any other), else its default pool.
    row, token = await runner_actions.enroll_runner(
        session,
        admin.tenant_id,
        body.name,
        state.settings.enrollment_token_ttl_s,
        actor=actor_for_key(admin.api_key_id),
        pool=body.pool,
        labels=body.labels,
    )
    await session.commit()
    # Served over TLS here, the token carries the key pin (control_plane/tls.py).
    return EnrollOut(
        token=token_with_pin(token, state.settings),
        runner_name=row.runner_name,
        expires_at=row.expires_at,
    )


@router.get("")
async def get_runners(state: AppStateDep, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    rows = await list_runners(session, caller.tenant_id)
    data = []
    for row in rows:
        out = runner_out(row)
        live = state.hub.lookup(row.id)  # connected here or to another replica
        out.connected = live is not None
        if live is not None:
            out.models = [m.name for m in live.models]
            status = runner_status(live)
            out.unavailable_models = list(status.unavailable_models)
            if not status.healthy and not out.unavailable_models:  # predates per-model status
                out.unavailable_models = list(out.models)
            out.headroom = status.headroom
            out.engines = [
                EngineSlotsOut(models=list(e.models), capacity=e.capacity, headroom=e.headroom)
                for e in status.engines
            ]
            out.in_flight = live.in_flight
            # Every link reports the runner-wide counter; the freshest is the largest.
            out.served_total = max((ln.load.completed for ln in live.links), default=0)
        data.append(out.model_dump(mode="json"))
    return {"object": "list", "data": data}


@router.post("/{runner_id}/revoke", response_model=RunnerOut)
async def revoke(
    runner_id: str, state: AppStateDep, admin: RunnersWriteDep, session: SessionDep
) -> RunnerOut:
    runner = await runner_actions.revoke(
        session, admin.tenant_id, runner_id, actor=actor_for_key(admin.api_key_id)
    )
    await session.commit()
    # Refuse at once: live connections are dropped, reconnects fail the handshake.
    await state.hub.disconnect(runner_id, CloseCode.REVOKED, "runner revoked")
    if state.cluster is not None:  # its other connections may end on other replicas
        await state.cluster.disconnect_everywhere(runner_id, CloseCode.REVOKED, "runner revoked")
    return runner_out(runner)


@router.patch("/{runner_id}", response_model=RunnerOut)
async def update(
    runner_id: str,
    body: RunnerUpdateIn,
    state: AppStateDep,
    admin: RunnersWriteDep,
    session: SessionDep,
) -> RunnerOut:
    """Set a runner's residency labels, price or pool: the owner's decisions, effective at once."""
    runner = await runner_actions.find_runner(session, admin.tenant_id, runner_id)
    await runner_actions.set_runner_settings(
        session,
        runner,
        actor=actor_for_key(admin.api_key_id),
        labels=body.labels,
        usd_per_hour=body.usd_per_hour,
        pool=body.pool,
    )
    await session.commit()
    apply_owner_settings(state.hub, runner)
    return runner_out(runner)


def runner_out(row: Runner) -> RunnerOut:
    out = RunnerOut.model_validate(row)
    out.usd_per_hour = hourly_rate(row.cost or {})
    return out
