"""The OpenAI-compatible surface: models, chat completions, completions."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter
from fastapi.responses import Response

from control_plane.api.deps import AppStateDep, CallerDep
from control_plane.errors import ApiError
from control_plane.openai.protocol import ChatCompletionRequest, CompletionRequest
from control_plane.openai.serving import InferenceCall, serve_inference
from control_plane.state import AppState

log = logging.getLogger("outpost.api")
router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
async def list_models(state: AppStateDep, caller: CallerDep) -> dict:
    now = int(time.time())
    data = [
        {"id": name, "object": "model", "created": now, "owned_by": "outpost",
         "engine": info.engine, "context_length": info.context_length}
        for name, info in sorted(state.hub.model_names().items())
    ]
    return {"object": "list", "data": data}


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, state: AppStateDep, caller: CallerDep) -> Response:
    return await _serve(state, caller, "/v1/chat/completions", body)


@router.post("/completions")
async def completions(body: CompletionRequest, state: AppStateDep, caller: CallerDep) -> Response:
    return await _serve(state, caller, "/v1/completions", body)


async def _serve(state: AppState, caller, endpoint: str,  # noqa: ANN001 - Caller
                 body: ChatCompletionRequest | CompletionRequest) -> Response:
    limit = state.settings.max_tokens_limit
    requested = body.requested_max_tokens()
    if requested is not None and requested > limit:
        raise ApiError(400, f"max_tokens {requested} exceeds this deployment's limit of {limit}.",
                       code="max_tokens_too_large", param="max_tokens")
    if vendor := body.vendor_fields():
        log.debug("passing vendor fields through to the engine: %s", vendor)
    call = InferenceCall(tenant_id=caller.tenant_id, api_key_id=caller.api_key_id, endpoint=endpoint,
                         model=body.model, body=body.model_dump_json(exclude_unset=True), stream=body.stream)
    return await serve_inference(state, call)
