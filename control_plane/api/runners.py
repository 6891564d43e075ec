"""Runner enrollment (token → identity key registration) and management."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from control_plane.api.deps import AdminDep, AppStateDep, CallerDep, SessionDep, bearer_token
from control_plane.audit import actor_for_key, record_admin, record_runner_event
from control_plane.errors import ApiError
from control_plane.openai.load import runner_status
from control_plane.schemas import EngineSlotsOut, RegisterRunnerIn, RegisterRunnerOut, RunnerOut
from control_plane.store.keys import consume_enrollment_token, create_enrollment_token
from control_plane.store.runners import create_runner, get_runner, list_runners, revoke_runner
from sdk.protocol import CloseCode

router = APIRouter(prefix="/api/runners", tags=["runners"])


@router.post("/register", response_model=RegisterRunnerOut, status_code=201)
async def register_runner(body: RegisterRunnerIn, request: Request, session: SessionDep) -> RegisterRunnerOut:
    token = bearer_token(request)
    if token is None:
        raise _token_refused("Missing enrollment token.")
    enrollment = await consume_enrollment_token(session, token)
    if enrollment is None:
        raise _token_refused("Enrollment token is invalid, expired or already used.")
    name = enrollment.runner_name  # read now: a failed flush expires the row
    try:
        runner = await create_runner(session, tenant_id=enrollment.tenant_id, name=name,
                                     identity_public_key=body.identity_public_key,
                                     hpke_public_key=body.hpke_public_key,
                                     hpke_key_signature=body.hpke_key_signature)
    except IntegrityError:
        raise ApiError(409, f"A runner named {name!r} already exists.",
                       code="runner_exists") from None
    await record_runner_event(session, event="enroll", runner_id=runner.id, tenant_id=runner.tenant_id,
                              actor=f"enrollment_token:{enrollment.id}", details={"name": runner.name})
    await session.commit()
    return RegisterRunnerOut(runner_id=runner.id, tenant_id=runner.tenant_id, name=runner.name)


def _token_refused(message: str) -> ApiError:
    # One code for malformed, unknown, wrong-secret, expired and used tokens: no
    # oracle for which tokens exist or were used. Never ``invalid_api_key``:
    # the caller holds (or claims) an enrollment token, not an API key.
    return ApiError(401, message, code="invalid_enrollment_token", headers={"WWW-Authenticate": "Bearer"})


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


class EnrollOut(BaseModel):
    token: str
    runner_name: str
    expires_at: datetime


@router.post("/enroll", response_model=EnrollOut, status_code=201)
async def create_enrollment(body: EnrollIn, state: AppStateDep, admin: AdminDep, session: SessionDep) -> EnrollOut:
    """A one-time, expiring enrollment token for a runner named ``name``; the secret is shown once."""
    row, token = await create_enrollment_token(session, admin.tenant_id, body.name,
                                               state.settings.enrollment_token_ttl_s)
    await record_admin(session, actor=actor_for_key(admin.api_key_id), action="enrollment_token.create",
                       tenant_id=admin.tenant_id, target=body.name, details={"token_id": row.id})
    await session.commit()
    return EnrollOut(token=token, runner_name=row.runner_name, expires_at=row.expires_at)


@router.get("")
async def get_runners(state: AppStateDep, caller: CallerDep, session: SessionDep) -> dict:
    rows = await list_runners(session, caller.tenant_id)
    data = []
    for row in rows:
        out = RunnerOut.model_validate(row)
        live = state.hub.lookup(row.id)  # connected here or to another replica
        out.connected = live is not None
        if live is not None:
            out.models = [m.name for m in live.models]
            status = runner_status(live)
            out.unavailable_models = list(status.unavailable_models)
            if not status.healthy and not out.unavailable_models:  # predates per-model status
                out.unavailable_models = list(out.models)
            out.headroom = status.headroom
            out.engines = [EngineSlotsOut(models=list(e.models), capacity=e.capacity, headroom=e.headroom)
                           for e in status.engines]
            out.in_flight = live.in_flight
            # Every link reports the runner-wide counter; the freshest is the largest.
            out.served_total = max((ln.load.completed for ln in live.links), default=0)
        data.append(out.model_dump(mode="json"))
    return {"object": "list", "data": data}


@router.post("/{runner_id}/revoke", response_model=RunnerOut)
async def revoke(runner_id: str, state: AppStateDep, admin: AdminDep, session: SessionDep) -> RunnerOut:
    runner = await get_runner(session, runner_id, tenant_id=admin.tenant_id)
    if runner is None:
        raise ApiError.not_found(f"No runner {runner_id!r} in this tenant.", code="runner_not_found")
    await revoke_runner(session, runner)
    await record_admin(session, actor=actor_for_key(admin.api_key_id), action="runner.revoke",
                       tenant_id=admin.tenant_id, target=runner_id, details={"name": runner.name})
    await session.commit()
    # Refuse at once: live connections are dropped, reconnects fail the handshake.
    await state.hub.disconnect(runner_id, CloseCode.REVOKED, "runner revoked")
    if state.cluster is not None:  # its other connections may end on other replicas
        await state.cluster.disconnect_everywhere(runner_id, CloseCode.REVOKED, "runner revoked")
    return RunnerOut.model_validate(runner)
