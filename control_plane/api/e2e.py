"""End-to-end mode: runner key documents, runner discovery, and the sealed routes.

The control plane stores and serves each runner's signed HPKE key, routes a
sealed request to exactly the runner it is sealed to, and relays ciphertext
both ways (``RequestFrame.sealed``). It never decrypts: usage comes from the
runner's signed receipt (:mod:`control_plane.services.receipts`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel

from outpost.control_plane.api.deps import AppStateDep, CallerDep, SessionDep

# The key's policy and rate limit, exactly as the clear OpenAI routes apply them.
from outpost.control_plane.api.openai import (
    PolicyDep,
    QuotaSettler,
    check_model_allowed,
    reserve_quota,
)
from outpost.control_plane.api.openai import _admit as admit_request
from outpost.control_plane.api.openai import _rate_headers as rate_headers
from outpost.control_plane.audit import AuditAction, actor_for_runner, record_admin
from outpost.control_plane.db.models import Runner
from outpost.control_plane.errors import ApiError
from outpost.control_plane.model_access import model_allowed
from outpost.control_plane.openai.call import ENDPOINTS_BY_NAME
from outpost.control_plane.openai.disconnect import watch
from outpost.control_plane.openai.serving import InferenceCall, serve_inference
from outpost.control_plane.routing.routing import RouteRequest, residency_allows
from outpost.control_plane.services.receipts import receipt_check
from outpost.control_plane.state import AppState
from outpost.control_plane.store.e2e_keys import hpke_key_document, store_hpke_key
from outpost.control_plane.store.runners import get_runner
from outpost.sdk.e2e import E2EError, parse_envelope, verify_hpke_key
from outpost.sdk.identity import b64u_decode
from outpost.sdk.sealed import (
    E2E_MALFORMED,
    E2E_MISMATCH,
    E2E_PREFIX,
    E2E_UNSUPPORTED,
    SealedRequest,
)

__all__ = ["router"]

router = APIRouter(tags=["e2e"])

#: How far in the future a key document's ``issued_at`` may be (runner clock skew).
_MAX_SKEW_S = 300


class E2EKeyOut(BaseModel):
    runner_id: str
    kem: str
    identity_fingerprint: str
    issued_at: int


def _identity(runner: Runner) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(b64u_decode(runner.identity_public_key))


@router.put("/api/runners/{runner_id}/e2e-key", response_model=E2EKeyOut)
async def put_e2e_key(
    runner_id: str, doc: Annotated[dict[str, Any], Body()], session: SessionDep
) -> E2EKeyOut:
    """Store a runner's signed HPKE key. The signature by its registered identity key is the
    credential."""
    runner = await get_runner(session, runner_id)
    if runner is None:
        raise ApiError.not_found(f"No runner {runner_id!r}.", code="runner_not_found")
    if runner.revoked_at is not None:
        raise ApiError.forbidden("This runner is revoked.")
    try:
        verified = verify_hpke_key(doc, _identity(runner))
    except E2EError as exc:
        raise ApiError(400, f"Key document refused: {exc}", code="e2e_key_invalid") from None
    if verified.runner_id != runner_id:
        raise ApiError(400, "Key document is for another runner.", code="e2e_key_invalid")
    if verified.issued_at > time.time() + _MAX_SKEW_S:
        raise ApiError(
            400,
            "Key document is issued in the future; check the runner's clock.",
            code="e2e_key_invalid",
        )
    current = hpke_key_document(runner)
    # A replayed older document must not roll a rotated key back.
    if current is not None and current != doc and verified.issued_at < current["issued_at"]:
        raise ApiError(409, "A newer key document is already stored.", code="e2e_key_stale")
    if current != doc:
        await store_hpke_key(session, runner, doc, verified)
        await record_admin(
            session,
            actor=actor_for_runner(runner_id),
            action=AuditAction.RUNNER_E2E_KEY,
            tenant_id=runner.tenant_id,
            target=runner_id,
            details={
                "kem": verified.hpke_public_key.kem.value,
                "issued_at": verified.issued_at,
                "identity_fingerprint": verified.identity_fingerprint,
            },
        )
        await session.commit()
    return E2EKeyOut(
        runner_id=runner_id,
        kem=verified.hpke_public_key.kem.value,
        identity_fingerprint=verified.identity_fingerprint,
        issued_at=verified.issued_at,
    )


@router.get("/api/runners/{runner_id}/e2e-key")
async def get_e2e_key(
    runner_id: str, caller: CallerDep, policy: PolicyDep, session: SessionDep
) -> dict[str, Any]:
    """The signed document of a runner the caller may use; clients verify it against the
    fingerprint they pinned."""
    runner = await get_runner(session, runner_id)
    usable = runner is not None and runner.revoked_at is None and runner.pool_id in policy.pools
    doc = hpke_key_document(runner) if usable and runner is not None else None
    if doc is None:
        raise ApiError.not_found(
            f"Runner {runner_id!r} has no end-to-end key.", code="e2e_key_not_found"
        )
    return doc


@router.get(f"{E2E_PREFIX}/runners")
async def e2e_runners(
    state: AppStateDep,
    caller: CallerDep,
    policy: PolicyDep,
    session: SessionDep,
    model: str | None = None,
) -> dict[str, Any]:
    """Connected runners the caller may use (its pools, its residency rules), serving ``model`` if
    given, that have a key, each with its signed document. Other tenants' runners are not listed."""
    live = state.hub.runners_for(model) if model else state.hub.routable()
    usable = [
        r
        for r in live
        if r.pool_id in policy.pools and residency_allows(r.labels, policy.residency)
    ]
    data = []
    for r in sorted(usable, key=lambda r: (r.in_flight, r.runner_id)):
        row = await get_runner(session, r.runner_id)
        if row is None or row.revoked_at is not None or (doc := hpke_key_document(row)) is None:
            continue
        data.append(
            {
                "runner_id": r.runner_id,
                "name": r.name,
                # The key's allow-list leaves out what it may not call, as /v1/models does.
                "models": [
                    m.name for m in r.models if model_allowed(policy.allowed_models, m.name)
                ],
                "in_flight": r.in_flight,
                "key": doc,
            }
        )
    return {"object": "list", "data": data}


@router.post(E2E_PREFIX + "/{endpoint:path}")
async def sealed_inference(
    endpoint: str,
    body: SealedRequest,
    request: Request,
    state: AppStateDep,
    caller: CallerDep,
    policy: PolicyDep,
    runner_header: Annotated[str | None, Header(alias="X-Outpost-Runner")] = None,
) -> Response:
    """The sealed twin of ``/v1/<endpoint>``: the same key policy, rate limit, budget and
    residency rules, but routed only to the runner the envelope is sealed to."""
    kind = ENDPOINTS_BY_NAME.get(endpoint)
    if kind is None:
        raise ApiError.not_found(f"No end-to-end endpoint {endpoint!r}.")
    runner_id = _bound_runner(body, runner_header)
    check_model_allowed(state, caller, policy, body.model)  # the model travels in clear
    rate = await admit_request(state, caller, policy)
    limit = state.settings.max_tokens_limit
    if body.max_tokens is not None and body.max_tokens > limit:
        raise ApiError(
            400,
            f"max_tokens {body.max_tokens} exceeds this deployment's limit of {limit}.",
            code="max_tokens_too_large",
            param="max_tokens",
        )
    identity = await _identity_of_sealing_runner(request, state, runner_id, policy.pools)
    live = state.hub.lookup(runner_id)  # held here or, with Redis, by another replica
    if live is not None and live.pool_id not in policy.pools:
        raise ApiError.not_found(
            f"No runner {runner_id!r}.", code="runner_not_found"
        )  # not the caller's to use
    if live is None:
        raise ApiError.unavailable(
            f"Runner {runner_id!r} is not connected; the request is sealed to it "
            "and cannot go elsewhere.",
            code="runner_not_connected",
        )
    if live.serves(body.model) is None:
        raise ApiError.not_found(
            f"Runner {runner_id!r} does not serve '{body.model}'.",
            code="model_not_found",
            param="model",
        )
    route = RouteRequest(
        model=body.model,
        endpoint=kind,
        residency=policy.residency,
        max_tokens=body.max_tokens,
        pools=policy.pools,
    )
    # Token quotas hold for sealed requests too. The prompt is sealed, so its estimate is the
    # envelope's size (base64 of about the plaintext: 4 characters carry 3 bytes, a token is a
    # few bytes); the reservation settles to the receipt's verified usage.
    estimate = len(body.envelope) * 3 // 16 + (body.max_tokens or limit)
    quota = await reserve_quota(state, caller, policy, estimate)
    settler = QuotaSettler(state.quotas, quota, choices=1)
    call = InferenceCall(
        on_settled=settler.add,
        tenant_id=caller.tenant_id,
        api_key_id=caller.api_key_id,
        body=body.model_dump_json(),
        stream=body.stream,
        sealed=True,
        max_tokens_cap=limit,  # the receipt's usage is clamped to it (openai/caps.py)
        route=route,
        tenant_weight=policy.tenant_weight,
        runner_id=runner_id,
        usage_from_receipt=receipt_check(identity, runner_id, body.request_id),
        client_gone=watch(request.receive),
    )
    try:
        response = await serve_inference(state, call)
    except BaseException:
        settler.finish()  # refused before (or while) running: give back what was not used
        raise
    if rate is not None:
        response.headers.update(rate_headers(rate))
    response.headers.update(quota.headers())
    return response


async def _identity_of_sealing_runner(
    request: Request, state: AppState, runner_id: str, pools: frozenset[str]
) -> str:
    """The identity key that must sign this runner's receipts; 404 or 400 if it cannot take e2e.

    A runner outside the caller's ``pools`` is a 404 before anything else is said about it
    (whether it has a key is no one else's business); the caller checks the live runner's
    pool again, since a remembered identity skips this read.

    Remembered per app once the runner has a key document, which saves a database
    round trip per sealed request: a runner's identity key never changes, a key
    document is only ever replaced, and a revoked runner is disconnected, which
    the caller checks on every request.
    """
    known: dict[str, str] | None = getattr(request.app.state, "e2e_identity_keys", None)
    if known is None:
        known = request.app.state.e2e_identity_keys = {}
    if (identity := known.get(runner_id)) is not None:
        return identity
    async with state.db.session() as session:
        row = await get_runner(session, runner_id)
    if row is None or row.revoked_at is not None or row.pool_id not in pools:
        raise ApiError.not_found(f"No runner {runner_id!r}.", code="runner_not_found")
    if hpke_key_document(row) is None:
        raise ApiError(400, f"Runner {runner_id!r} has no end-to-end key.", code=E2E_UNSUPPORTED)
    known[runner_id] = row.identity_public_key
    return row.identity_public_key


def _bound_runner(body: SealedRequest, header: str | None) -> str:
    """The runner named by the header, which must be the one the envelope is sealed to."""
    if not header:
        raise ApiError(
            400,
            "End-to-end requests name their runner in X-Outpost-Runner.",
            code=E2E_MISMATCH,
            param="X-Outpost-Runner",
        )
    try:
        envelope = parse_envelope(body.envelope)
    except E2EError as exc:
        raise ApiError(
            400, f"Envelope refused: {exc}", code=E2E_MALFORMED, param="envelope"
        ) from None
    if envelope.runner_id != header:
        raise ApiError(
            400,
            "The envelope is sealed to another runner than X-Outpost-Runner names.",
            code=E2E_MISMATCH,
            param="X-Outpost-Runner",
        )
    return header
