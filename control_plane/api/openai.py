"""The OpenAI-compatible surface: models, chat completions, completions, embeddings.

Every inference route reads the same way: the caller's policy (key, then
tenant), the per-request routing override, the rate limit, then the routing
request handed to :mod:`control_plane.openai.serving`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from outpost.control_plane.api.deps import AppStateDep, Caller, CallerDep, get_caller, get_state
from outpost.control_plane.errors import ApiError
from outpost.control_plane.model_access import model_allowed
from outpost.control_plane.openai.caps import cap_request, choices
from outpost.control_plane.openai.disconnect import watch
from outpost.control_plane.openai.fanout import SharedGone, serve_choices
from outpost.control_plane.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)
from outpost.control_plane.openai.serving import InferenceCall, serve_inference
from outpost.control_plane.routing.affinity import affinity_keys
from outpost.control_plane.routing.load import runner_status
from outpost.control_plane.routing.routing import (
    POLICIES,
    Endpoint,
    RouteRequest,
    RoutingPolicy,
    residency_allows,
)
from outpost.control_plane.services.quotas import Quotas, Reservation, counters_for
from outpost.control_plane.services.ratelimit import RateDecision
from outpost.control_plane.state import AppState
from outpost.control_plane.store.policies import KeyPolicy, get_key_policy
from outpost.sdk.protocol import Usage

log = logging.getLogger("outpost.api")
router = APIRouter(prefix="/v1", tags=["openai"])

#: Per-request override of the key's and tenant's routing policy.
ROUTING_HEADER = "X-Outpost-Routing"


async def get_key_policy_dep(state: AppStateDep, caller: CallerDep) -> KeyPolicy:
    if caller.policy is not None:  # read (or cached) with the key
        return caller.policy
    async with state.db.session() as session:
        policy = await get_key_policy(session, caller.api_key_id)
    return policy or KeyPolicy()


PolicyDep = Annotated[KeyPolicy, Depends(get_key_policy_dep)]


@dataclass(frozen=True)
class Inference:
    """Who calls an inference route, and under which policy."""

    state: AppState
    caller: Caller
    policy: KeyPolicy


async def get_inference(request: Request) -> Inference:
    # One dependency, not three chained ones: FastAPI solves each per request, and on the
    # routes every request takes that was ~50 µs of CPU apiece (docs/performance.md).
    state = get_state(request)
    caller = await get_caller(request, state)
    return Inference(state, caller, await get_key_policy_dep(state, caller))


InferenceDep = Annotated[Inference, Depends(get_inference)]


@router.get("/models")
async def list_models(state: AppStateDep, caller: CallerDep, policy: PolicyDep) -> dict[str, Any]:
    """Every name (and alias) a runner this caller may use serves, merged across runners:
    runners in the tenant's usable pools (store.pools) whose owner-set labels meet its residency
    rules."""
    now = int(time.time())
    merged: dict[str, dict[str, Any]] = {}
    for runner in sorted(state.hub.routable(), key=lambda r: r.runner_id):
        if runner.pool_id not in policy.pools or not residency_allows(
            runner.labels, policy.residency
        ):
            continue
        down = runner_status(runner).unavailable_models
        for m in runner.models:
            if m.name in down:
                continue  # its engine is restarting on this runner
            for name in (m.name, *m.aliases):
                if not model_allowed(policy.allowed_models, name):
                    continue  # the key's allow-list leaves it out
                entry = merged.setdefault(
                    name,
                    {
                        "id": name,
                        "object": "model",
                        "created": now,
                        "owned_by": "outpost",
                        "engine": m.engine,
                        "context_length": m.context_length,
                        "root": m.name,
                        "engines": [],
                        "endpoints": [],
                        "runners": 0,
                    },
                )
                entry["runners"] += 1
                entry["engines"] = sorted({*entry["engines"], m.engine})
                entry["endpoints"] = sorted({*entry["endpoints"], *m.endpoints})
    return {"object": "list", "data": [merged[k] for k in sorted(merged)]}


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, who: InferenceDep
) -> Response:
    return await _serve(who.state, request, who.caller, who.policy, "chat", body)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, who: InferenceDep) -> Response:
    return await _serve(who.state, request, who.caller, who.policy, "completions", body)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, who: InferenceDep) -> Response:
    return await _serve(who.state, request, who.caller, who.policy, "embeddings", body)


@router.post("/rerank")
async def rerank(body: RerankRequest, request: Request, who: InferenceDep) -> Response:
    """Scores of documents against a query, where a runner serving the model advertises
    ``rerank`` (llama.cpp's reranking mode, ``runner local-runner --rerank``)."""
    return await _serve(who.state, request, who.caller, who.policy, "rerank", body)


async def _serve(
    state: AppState,
    request: Request,
    caller: Caller,
    policy: KeyPolicy,
    endpoint: Endpoint,
    body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | RerankRequest,
) -> Response:
    routing = _routing_policy(request, policy)
    check_model_allowed(state, caller, policy, body.model)
    rate = await _admit(state, caller, policy)
    max_tokens = cap = None
    n, capped_body = 1, None
    if isinstance(body, EmbeddingRequest | RerankRequest):
        if isinstance(body, RerankRequest) and body.top_n is not None:
            body.top_n = min(body.top_n, len(body.documents))  # engines differ past the end
        forwarded = body.model_dump_json(exclude_unset=True)
    else:
        n = choices(body, limit=state.settings.max_choices)
        # One sequence, with an explicit token cap the engine is sent and usage is clamped to
        # (caps.py).
        capped = cap_request(
            body, limit=state.settings.max_tokens_limit, window=lambda: _window(state, body.model)
        )
        max_tokens, cap, capped_body = capped.requested, capped.max_tokens, capped.body
        forwarded = json.dumps(capped.body, ensure_ascii=False, separators=(",", ":"))
    if vendor := body.vendor_fields():
        log.debug("passing vendor fields through to the engine: %s", vendor)
    route = RouteRequest(
        model=body.model,
        endpoint=endpoint,
        policy=routing,
        residency=policy.residency,
        affinity_keys=()
        if isinstance(body, EmbeddingRequest | RerankRequest)
        else affinity_keys(caller.tenant_id, body),
        prompt_tokens=body.estimated_prompt_tokens(),
        max_tokens=max_tokens,
        pools=policy.pools,
        needs=_needs(body),
    )
    # Quotas last: nothing refused above holds tokens or a slot.
    quota = await reserve_quota(state, caller, policy, n * (route.prompt_tokens + (cap or 0)))
    settler = QuotaSettler(state.quotas, quota, choices=n)
    call = InferenceCall(
        on_settled=settler.add,
        tenant_id=caller.tenant_id,
        api_key_id=caller.api_key_id,
        body=forwarded,
        max_tokens_cap=cap,
        stream=bool(getattr(body, "stream", False)),
        route=route,
        tenant_weight=policy.tenant_weight,
        client_gone=watch(request.receive),
    )
    try:
        if n > 1 and capped_body is not None:  # one request per choice (fanout.py)
            response = await serve_choices(state, call, capped_body, n, SharedGone(request.receive))
        else:
            response = await serve_inference(state, call)
    except BaseException:
        settler.finish()  # refused before (or while) running: give back what was not used
        raise
    if rate is not None:
        response.headers.update(_rate_headers(rate))
    response.headers.update(quota.headers())
    return response


def check_model_allowed(state: AppState, caller: Caller, policy: KeyPolicy, model: str) -> None:
    """403 ``model_not_allowed`` unless the key's allow-list admits ``model`` (model_access)."""
    if model_allowed(policy.allowed_models, model):
        return
    state.metrics.reject(caller.tenant_id, "model_not_allowed")
    raise ApiError(
        403,
        f"This API key may not call the model {model[:200]!r}: it is not on the key's "
        "allowed models.",
        type="permission_error",
        code="model_not_allowed",
        param="model",
    )


async def reserve_quota(
    state: AppState, caller: Caller, policy: KeyPolicy, estimate: int
) -> Reservation:
    """Reserve the request's estimated tokens (and an in-flight slot); 429 when a quota is spent."""
    counters = counters_for(
        caller.tenant_id,
        caller.api_key_id,
        key_per_minute=policy.key_tokens_per_minute,
        key_per_day=policy.key_tokens_per_day,
        tenant_per_minute=policy.tenant_tokens_per_minute,
        tenant_per_day=policy.tenant_tokens_per_day,
    )
    result = await state.quotas.reserve(
        counters, estimate, key_id=caller.api_key_id, max_concurrent=policy.max_concurrent
    )
    if isinstance(result, Reservation):
        return result
    state.metrics.reject(caller.tenant_id, result.code)
    headers = dict(result.headers)
    if result.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(result.retry_after_s)))
    raise ApiError(429, result.message, type="rate_limit_error", code=result.code, headers=headers)


class QuotaSettler:
    """Adds up the usage of a request's choices (one call each) and settles once, with all."""

    def __init__(self, quotas: Quotas, reservation: Reservation, *, choices: int) -> None:
        self._quotas, self._reservation = quotas, reservation
        self._left, self._tokens = choices, 0

    def add(self, usage: Usage) -> None:
        self._tokens += usage.prompt_tokens + usage.completion_tokens
        self._left -= 1
        if self._left == 0:
            self.finish()

    def finish(self) -> None:
        self._left = -1  # once
        self._quotas.settle_soon(self._reservation, self._tokens)


def _needs(
    body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest | RerankRequest,
) -> frozenset[str]:
    """Capabilities beside the endpoint: a request that may call tools needs an engine that can."""
    if isinstance(body, ChatCompletionRequest) and body.uses_tools():
        return frozenset({"tools"})
    return frozenset()


def _window(state: AppState, model: str) -> int | None:
    """The largest context window a connected runner declares for ``model`` (``None``: one
    declares none)."""
    windows = [
        m.context_length for r in state.hub.runners_for(model) if (m := r.serves(model)) is not None
    ]
    known = [w for w in windows if w is not None]
    return max(known) if known and len(known) == len(windows) else None


def _routing_policy(request: Request, policy: KeyPolicy) -> RoutingPolicy:
    override = request.headers.get(ROUTING_HEADER)
    if override is None:
        chosen = policy.routing_policy
        return cast(RoutingPolicy, chosen if chosen in POLICIES else "balanced")
    value = override.strip().lower()
    if value not in POLICIES:
        raise ApiError(
            400,
            f"{ROUTING_HEADER} must be one of {', '.join(POLICIES)}; got {override[:32]!r}.",
            code="invalid_routing_policy",
            param=ROUTING_HEADER,
        )
    return cast(RoutingPolicy, value)


async def _admit(state: AppState, caller: Caller, policy: KeyPolicy) -> RateDecision | None:
    """Take one request from the key's allowance; 429 with Retry-After when it is spent."""
    if policy.rate_limit_rpm is None:
        return None
    decision = await state.rate_limiter.acquire(caller.api_key_id, policy.rate_limit_rpm)
    if not decision.allowed:
        state.metrics.reject(caller.tenant_id, "rate_limit_exceeded")
        raise ApiError(
            429,
            f"Rate limit of {decision.limit} requests per minute reached for this API key; "
            f"retry after {decision.retry_after_header}s.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": decision.retry_after_header, **_rate_headers(decision)},
        )
    return decision


def _rate_headers(rate: RateDecision) -> dict[str, str]:
    # OpenAI's names, so clients that read them work unchanged.
    return {
        "x-ratelimit-limit-requests": str(rate.limit),
        "x-ratelimit-remaining-requests": str(rate.remaining),
        "x-ratelimit-reset-requests": f"{rate.reset_s:.3f}s",
    }
