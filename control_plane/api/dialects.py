"""The Responses API and Anthropic Messages front doors (control_plane/dialects/).

Each translates its request into a chat-completions request and serves it through
the same path as ``/v1/chat/completions`` (:func:`control_plane.api.openai._serve`):
key policy and model allow-list, rate limit, pools and residency, routing, the fair
queue, budgets, records and audit. Only the wire shapes differ. ``/v1/messages``
answers every error in Anthropic's shape and takes the key from ``x-api-key`` as well
as from ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from outpost.control_plane.api.deps import AppStateDep, Caller, bearer_token
from outpost.control_plane.api.openai import InferenceDep, _serve, get_key_policy_dep
from outpost.control_plane.dialects import messages, responses
from outpost.control_plane.dialects.chat import parse_completion
from outpost.control_plane.dialects.messages_request import MessagesRequest
from outpost.control_plane.dialects.messages_request import to_chat as messages_to_chat
from outpost.control_plane.dialects.responses_request import ResponsesRequest
from outpost.control_plane.dialects.responses_request import to_chat as responses_to_chat
from outpost.control_plane.dialects.stream import DialectStream
from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.protocol import ChatCompletionRequest
from outpost.control_plane.services.auth_cache import authenticate
from outpost.control_plane.state import AppState
from outpost.control_plane.store.policies import KeyPolicy

__all__ = ["router"]

log = logging.getLogger("outpost.api")
router = APIRouter(prefix="/v1", tags=["dialects"])

#: A chat field named in an error, by the name the dialect's client sent: (chat, dialect) patterns.
Renames = tuple[tuple[str, str], ...]
_RESPONSES_PARAMS: Renames = (
    (r"^max_tokens\b", "max_output_tokens"),
    (r"^messages\b", "input"),
    (r"^response_format\b", "text.format"),
    (r"^tools\.(\d+)\.function\.", r"tools.\1."),
)
_MESSAGES_PARAMS: Renames = (
    (r"^stop\b", "stop_sequences"),
    (r"^tools\.(\d+)\.function\.parameters\b", r"tools.\1.input_schema"),
    (r"^tools\.(\d+)\.function\.", r"tools.\1."),
)


#: Names pydantic puts in an error's location for the member of a union it tried: not fields.
_BRANCHES = {"str", "int", "float", "bool", "dict", "list", "none"}
_BRANCHES |= {"message", "function_call", "function_call_output"}  # the input items' tags


def _invalid(exc: ValidationError) -> ApiError:
    """A 400 naming the most specific field at fault (of a union's members, the deepest error)."""
    errors = exc.errors()
    if not errors:
        return ApiError(400, "invalid request body", code="invalid_request")
    first = max(errors, key=lambda e: len(e["loc"]))
    parts = [str(p) for p in first["loc"] if str(p) not in _BRANCHES and "[" not in str(p)]
    param = ".".join(parts) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "this field is not supported by this endpoint (docs/api.md)"
    return ApiError(400, f"{param or 'body'}: {message}", code="invalid_request", param=param)


async def _serve_chat(
    state: AppState,
    request: Request,
    caller: Caller,
    policy: KeyPolicy,
    chat: dict[str, Any],
    renames: Renames,
) -> Response:
    """The translated request on the chat path; an error names the dialect's own field."""
    try:
        body = ChatCompletionRequest.model_validate(chat)
        return await _serve(state, request, caller, policy, "chat", body)
    except ValidationError as exc:
        error = _invalid(exc)
    except ApiError as exc:
        error = exc
    if (chat_param := error.param) is not None:
        param = chat_param
        for pattern, name in renames:
            param = re.sub(pattern, name, param)
        error.param, error.message = param, error.message.replace(chat_param, param, 1)
    raise error


def _streams(served: Response) -> bool:
    """A streamed answer (the relay, or headers sent early while the request waits); an engine's
    refusal of a streamed request is a whole JSON answer."""
    return served.media_type == "text/event-stream"


def _whole(
    served: Response, render: Callable[[str], str], failed: Callable[[str], str]
) -> Response:
    """A non-streamed chat answer re-dressed: ``render`` an answer, ``failed`` an error envelope."""
    headers = {
        k: v for k, v in served.headers.items() if k not in ("content-length", "content-type")
    }
    text = bytes(served.body).decode("utf-8", "replace")
    if served.status_code >= 400:
        return Response(failed(text), served.status_code, headers, media_type="application/json")
    try:
        content = render(text)
    except (ValueError, TypeError, ValidationError):
        log.warning("a runner's chat answer could not be translated: %.200s", text)
        error = ApiError(
            502, "The engine's answer was malformed.", type="server_error", code="engine_error"
        )
        return Response(
            failed(json.dumps(error.body())), 502, headers, media_type="application/json"
        )
    return Response(content, 200, headers, media_type="application/json")


@router.post("/responses")
async def create_response(
    request: Request, who: InferenceDep, raw: Annotated[dict[str, Any], Body()]
) -> Response:
    """OpenAI's Responses API. The body is checked here rather than by FastAPI so that a refusal
    names the deepest field at fault (an input item's part, not the union that holds it)."""
    try:
        body = ResponsesRequest.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None
    chat = responses_to_chat(body)
    served = await _serve_chat(who.state, request, who.caller, who.policy, chat, _RESPONSES_PARAMS)
    if _streams(served):
        return DialectStream(served, responses.ResponsesStream(body))
    return _whole(
        served,
        lambda text: responses.response_object(body, parse_completion(text)).model_dump_json(
            exclude_unset=True
        ),
        lambda text: text,  # the chat path's errors are already OpenAI's envelope
    )


async def _anthropic_caller(request: Request, state: AppState) -> Caller:
    token = request.headers.get("x-api-key") or bearer_token(request)
    if not token:
        raise ApiError.unauthorized("Missing API key: send 'x-api-key: <key>'.")
    key = await authenticate(state.db, state.key_cache, token.strip())
    if key is None:
        raise ApiError.unauthorized()
    return Caller(
        tenant_id=key.tenant_id, api_key_id=key.api_key_id, scopes=key.scopes, policy=key.policy
    )


def _anthropic_error(text: str) -> str:
    """An OpenAI error envelope from the chat path, in Anthropic's shape."""
    try:
        err = json.loads(text)["error"]
        message = str(err.get("message", "error"))
        kind = str(err.get("type", "api_error"))
        code = err.get("code") if isinstance(err.get("code"), str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        message, kind, code = text[:500] or "error", "api_error", None
    anthropic_kind = messages.anthropic_type(kind, code)
    return json.dumps({"type": "error", "error": {"type": anthropic_kind, "message": message}})


async def _messages(request: Request, state: AppState) -> Response:
    caller = await _anthropic_caller(request, state)
    policy = await get_key_policy_dep(state, caller)
    try:
        body = MessagesRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid(exc) from None
    chat = messages_to_chat(body)
    served = await _serve_chat(state, request, caller, policy, chat, _MESSAGES_PARAMS)
    if _streams(served):
        return DialectStream(served, messages.MessagesStream(body.model))
    return _whole(
        served,
        lambda text: messages.message_object(body.model, parse_completion(text)).model_dump_json(
            exclude_unset=True
        ),
        _anthropic_error,
    )


@router.post("/messages")
async def create_message(request: Request, state: AppStateDep) -> Response:
    """Anthropic Messages. The body is read here rather than by FastAPI so that every refusal,
    a malformed body or a missing key included, is in Anthropic's error shape; the
    ``anthropic-version`` and ``anthropic-beta`` headers are accepted and not read."""
    try:
        return await _messages(request, state)
    except ApiError as exc:
        return JSONResponse(messages.error_body(exc), exc.status, headers=exc.headers)
