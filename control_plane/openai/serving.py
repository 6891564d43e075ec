"""The story of one OpenAI request: admit, find a runner that answers, relay its answer, record it.

A request is retried on the next runner as long as nothing has reached the
client (failover.py). After that, a failure becomes an error event and
``[DONE]``. What the request holds on the way, and its record, belong to its
:class:`~control_plane.openai.lifecycle.RequestLife`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import Response
from starlette.background import BackgroundTask

from outpost.control_plane.errors import ApiError, error_body, sse_error_event
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.disconnect import read_or_gone
from outpost.control_plane.openai.early_stream import STREAM_HEADERS, respond_early
from outpost.control_plane.openai.failover import Opened, open_with_failover
from outpost.control_plane.openai.lifecycle import RequestLife
from outpost.control_plane.openai.relay_response import LastChunk, RelayResponse
from outpost.control_plane.state import AppState
from outpost.control_plane.tunnel.stream import LinkClosed
from outpost.sdk.protocol import EndFrame, ResetFrame, ResponseStartFrame

__all__ = ["InferenceCall", "serve_inference"]

_DONE = "data: [DONE]\n\n"
_RELAYED = (str, EndFrame, ResetFrame, LinkClosed)  # a tuple: not a union built per event


async def serve_inference(
    state: AppState, call: InferenceCall, *, early_headers: bool = True
) -> Response:
    """The response to ``call``. A streamed one not answered within
    ``stream_headers_after_s`` gets its headers at once and keep-alives while it waits
    (early_stream.py); ``early_headers=False`` waits for the answer (fanout.py merges them)."""
    # Back-pressure: refused here, a request is not accepted, so it needs no record.
    state.records.check_capacity()
    life = RequestLife(state, call)
    if not (call.stream and early_headers):
        return await _respond(state, call, life)
    return await respond_early(
        _respond(state, call, life),
        after_s=state.settings.stream_headers_after_s,
        interval_s=state.settings.stream_keepalive_s,
        headers={"x-request-id": call.request_id},
    )


async def _respond(state: AppState, call: InferenceCall, life: RequestLife) -> Response:
    async with life:
        budget = await state.admission.check_budget(state.db, call)
        opened = await open_with_failover(state, call, life)
        headers = {
            "x-request-id": call.request_id,
            "x-outpost-runner": opened.runner.runner_id,
            **budget.headers(),
        }
        if life.decision is not None:
            headers["x-outpost-routing"] = life.decision.header()
        if life.relays:
            # The body takes the request over (and the background task settles one that never ran).
            return RelayResponse(
                _relay_stream(life, opened),
                opened.stream,
                media_type="text/event-stream",
                headers={**headers, **STREAM_HEADERS},
                background=BackgroundTask(life.close),
            )
        body = await _collect(life, opened)
        return Response(
            body,
            status_code=life.http_status,
            media_type=opened.start.content_type,
            headers=headers,
        )


async def _events(opened: Opened) -> AsyncIterator[str | EndFrame | ResetFrame | LinkClosed]:
    yield opened.first
    while not isinstance(opened.first, EndFrame):
        ev = await opened.stream.next_event()
        if isinstance(ev, ResponseStartFrame):
            continue
        if not isinstance(ev, _RELAYED):
            continue  # a holder's admission events come before the first byte only
        yield ev
        if not isinstance(ev, str):
            return


async def _relay_stream(life: RequestLife, opened: Opened) -> AsyncIterator[str]:
    """The SSE body. The end of the answer (``[DONE]``, or an error event) goes out only after the
    runner's end frame (usage) and the record's commit: an answered request survives a crash."""
    tail = ""
    async with life:
        async for ev in _events(opened):
            if isinstance(ev, str):
                # Data that queued up behind this frame goes out in the same write.
                data = ev + opened.stream.take_data()
                life.bytes_out += len(data)
                size = len(data)
                if data.endswith(_DONE):
                    life.answered()
                    data, tail = data[: -len(_DONE)], _DONE
                if data:
                    yield data
                await opened.stream.consumed(size)
            elif isinstance(ev, EndFrame):
                life.ended(ev)
                if ev.error:
                    life.failed("engine_error")
                    tail = (
                        sse_error_event(ev.error, "server_error", "engine_error").decode() + _DONE
                    )
            elif (
                not life.answered_in_full
            ):  # gone after answering, the answer stands (without usage)
                life.lost()
                tail = (
                    sse_error_event(
                        f"The runner stopped mid-stream: {ev.reason}", "server_error", "runner_lost"
                    ).decode()
                    + _DONE
                )
    if tail:
        yield LastChunk(tail)  # nothing follows it: the end of the body goes in the same write


async def _collect(life: RequestLife, opened: Opened) -> str:
    """A whole (non-streamed) answer: it goes out once the record is committed (docs/audit.md)."""
    parts: list[str] = []
    await read_or_gone(_read_body(life, opened, parts), life.call.client_gone, opened.stream)
    body = "".join(parts)
    life.bytes_out = len(body)
    if opened.start.status >= 400:  # the engine refused the request, or failed
        life.failed("engine_error" if opened.start.status >= 500 else "engine_rejected")
        body = _as_error_envelope(body, opened.start.status)
    life.answered()
    return body


async def _read_body(life: RequestLife, opened: Opened, parts: list[str]) -> None:
    async for ev in _events(opened):
        if isinstance(ev, str):
            parts.append(ev)
            await opened.stream.consumed(len(ev))
        elif isinstance(ev, EndFrame):
            life.ended(ev)
            if ev.error:
                raise ApiError(
                    502, f"The engine failed: {ev.error}", type="server_error", code="engine_error"
                )
        else:
            raise ApiError(
                502,
                f"The runner stopped before answering: {ev.reason}",
                type="server_error",
                code="runner_lost",
            )


def _as_error_envelope(body: str, status: int) -> str:
    """Engines disagree on error shapes; clients get OpenAI's envelope. An engine's 5xx is a 502
    ``engine_error`` whatever the engine called it (the client's status is 502 too)."""
    failed = status >= 500
    message, kind, code = body[:500] or "engine error", "invalid_request_error", None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            err = parsed["error"]
            message = str(err.get("message", "engine error"))
            kind = str(err.get("type", "invalid_request_error"))
            code = err.get("code") if isinstance(err.get("code"), str) else None
    except ValueError:
        pass
    if failed:
        kind, code = "server_error", "engine_error"
    return json.dumps(error_body(message, kind, code))
