"""Proxying one OpenAI request to a runner: pick, open a stream, fail over, relay.

A request is retried on the next candidate as long as nothing has reached the
client: the response is held back until the runner's first data frame (or
its end) arrives. After that, a failure becomes an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response, StreamingResponse

from sdk.protocol import DataFrame, EndFrame, ResetFrame, ResponseStartFrame, Usage

from control_plane.db.models import RequestRecord, new_id
from control_plane.errors import ApiError, error_body, sse_error_event
from control_plane.openai.routing import rank_candidates
from control_plane.state import AppState
from control_plane.store.records import add_request_record
from control_plane.store.runners import known_model
from control_plane.tunnel.hub import ConnectedRunner
from control_plane.tunnel.link import Link
from control_plane.tunnel.stream import LinkClosed, Stream

__all__ = ["InferenceCall", "serve_inference"]

log = logging.getLogger("outpost.serving")
_DONE = "data: [DONE]\n\n"
_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    # Work that must finish even if the client's task is cancelled (reset the
    # runner's stream, write the record); keep a reference so it is not GC'd.
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass
class InferenceCall:
    tenant_id: str
    api_key_id: str | None
    endpoint: str  # "/v1/chat/completions"
    model: str
    body: str
    stream: bool
    sealed: bool = False
    request_id: str = field(default_factory=lambda: new_id("req"))
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Opened:
    runner: ConnectedRunner
    link: Link
    stream: Stream
    start: ResponseStartFrame
    first: DataFrame | EndFrame
    attempts: int


class _Outcome:
    """What the request record needs, filled in as the response goes out."""

    def __init__(self, call: InferenceCall) -> None:
        self.call = call
        self.runner_id: str | None = None
        self.attempts = 0
        self.status = "ok"
        self.http_status = 200
        self.error_type: str | None = None
        self.usage = Usage()
        self.ttft_ms: float | None = None
        self.bytes_out = 0

    def record(self) -> RequestRecord:
        c = self.call
        return RequestRecord(
            id=c.request_id, tenant_id=c.tenant_id, api_key_id=c.api_key_id, model=c.model,
            runner_id=self.runner_id, endpoint=c.endpoint, stream=c.stream, e2e=c.sealed,
            status=self.status, http_status=self.http_status, error_type=self.error_type,
            prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens,
            attempts=self.attempts, ttft_ms=self.ttft_ms,
            latency_ms=(time.monotonic() - c.started) * 1000, bytes_out=self.bytes_out,
        )


async def serve_inference(state: AppState, call: InferenceCall) -> Response:
    outcome = _Outcome(call)
    try:
        opened = await _open_with_failover(state, call, outcome)
    except ApiError as exc:
        outcome.status, outcome.http_status, outcome.error_type = "error", exc.status, exc.code
        _spawn(_write_record(state, outcome))
        raise
    outcome.runner_id = opened.runner.runner_id
    outcome.http_status = opened.start.status
    headers = {"x-request-id": call.request_id, "x-outpost-runner": opened.runner.runner_id}
    if call.stream and opened.start.status == 200:
        return StreamingResponse(_relay_stream(state, opened, outcome), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
    body = await _collect(state, opened, outcome)
    return Response(body, status_code=opened.start.status, media_type=opened.start.content_type,
                    headers=headers)


async def _open_with_failover(state: AppState, call: InferenceCall, outcome: _Outcome) -> _Opened:
    settings = state.settings
    # A runner that just lost its tunnel usually reconnects within a second or
    # two; a request that has sent nothing to its client waits for it.
    deadline = time.monotonic() + settings.runner_wait_s
    failed: set[int] = set()  # links that failed this request (a reconnect is a new link)
    last_error = "no runner is connected for this model"
    attempt = 0
    while attempt <= settings.max_retries:
        picked = _pick(state, call, failed)
        if picked is None:
            if attempt == 0 and not state.hub.runners_for(call.model):
                error = await _no_runner_error(state, call.model)
                if error.status == 404:
                    raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await state.hub.wait_changed(remaining)
            continue
        runner, link = picked
        attempt += 1
        outcome.attempts = attempt
        try:
            st = await link.open_stream(path=call.endpoint, model=call.model, body=call.body,
                                        stream=call.stream, sealed=call.sealed)
        except ConnectionError as exc:
            failed.add(id(link))
            last_error = str(exc)
            continue
        runner.in_flight += 1
        try:
            start, first = await _first_byte(st, settings.first_byte_timeout_s)
        except _AttemptFailed as exc:
            runner.in_flight -= 1
            failed.add(id(link))
            link.close_stream(st)
            _spawn(st.cancel("failover"))
            last_error = exc.reason
            log.info("request %s: runner %s failed before first byte (%s); trying next",
                     call.request_id, runner.runner_id, exc.reason)
            continue
        outcome.ttft_ms = (time.monotonic() - call.started) * 1000
        return _Opened(runner, link, st, start, first, attempt)
    if attempt == 0:
        raise await _no_runner_error(state, call.model)
    raise ApiError.unavailable(f"No runner could serve the request: {last_error}.", code="runner_failed")


def _pick(state: AppState, call: InferenceCall, failed: set[int]) -> tuple[ConnectedRunner, Link] | None:
    for runner in rank_candidates(state.hub.candidates(call.model)):
        link = runner.usable_link()
        if link is not None and id(link) not in failed:
            return runner, link
    return None


class _AttemptFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _first_byte(st: Stream, timeout: float) -> tuple[ResponseStartFrame, DataFrame | EndFrame]:
    deadline = time.monotonic() + timeout
    start: ResponseStartFrame | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            ev = await st.next_event(max(remaining, 0.001))
        except TimeoutError:
            raise _AttemptFailed("timed out waiting for the runner") from None
        if isinstance(ev, LinkClosed):
            raise _AttemptFailed(f"tunnel closed: {ev.reason}")
        if isinstance(ev, ResetFrame):
            raise _AttemptFailed(f"runner reset the stream: {ev.reason}")
        if isinstance(ev, ResponseStartFrame):
            start = ev
            continue
        assert start is not None  # Stream.deliver enforces response_start first
        if isinstance(ev, EndFrame) and ev.error and start.status >= 500:
            raise _AttemptFailed(f"engine error: {ev.error}")
        return start, ev


async def _no_runner_error(state: AppState, model: str) -> ApiError:
    if model in state.hub.model_names():
        return ApiError.unavailable(f"Every runner serving '{model}' is busy or draining; retry shortly.")
    async with state.db.session() as session:
        if await known_model(session, model):
            return ApiError.unavailable(f"No runner serving '{model}' is connected.")
    return ApiError.not_found(f"The model '{model}' does not exist or no runner serves it.",
                              code="model_not_found", param="model")


async def _events(opened: _Opened) -> AsyncIterator[DataFrame | EndFrame | ResetFrame | LinkClosed]:
    yield opened.first
    while not isinstance(opened.first, EndFrame):
        ev = await opened.stream.next_event()
        if isinstance(ev, ResponseStartFrame):
            continue
        yield ev
        if not isinstance(ev, DataFrame):
            return


async def _relay_stream(state: AppState, opened: _Opened, outcome: _Outcome) -> AsyncIterator[str]:
    finished = False
    try:
        async for ev in _events(opened):
            if isinstance(ev, DataFrame):
                outcome.bytes_out += len(ev.data)
                yield ev.data
                await opened.stream.consumed(len(ev.data))
            elif isinstance(ev, EndFrame):
                finished = True
                if ev.usage:
                    outcome.usage = ev.usage
                if ev.error:
                    outcome.status, outcome.error_type = "error", "engine_error"
                    yield sse_error_event(ev.error, "server_error", "engine_error").decode()
                    yield _DONE
            else:
                finished = True
                reason = ev.reason
                outcome.status, outcome.error_type = "error", "runner_lost"
                yield sse_error_event(f"The runner stopped mid-stream: {reason}", "server_error",
                                      "runner_lost").decode()
                yield _DONE
    finally:
        opened.runner.in_flight -= 1
        if not finished:
            outcome.status, outcome.error_type = "cancelled", "client_disconnected"
            opened.link.close_stream(opened.stream)
            _spawn(opened.stream.cancel("client disconnected"))
        _spawn(_write_record(state, outcome))


async def _collect(state: AppState, opened: _Opened, outcome: _Outcome) -> str:
    parts: list[str] = []
    try:
        async for ev in _events(opened):
            if isinstance(ev, DataFrame):
                parts.append(ev.data)
                await opened.stream.consumed(len(ev.data))
            elif isinstance(ev, EndFrame):
                if ev.usage:
                    outcome.usage = ev.usage
                if ev.error:
                    raise ApiError(502, f"The engine failed: {ev.error}", type="server_error",
                                   code="engine_error")
            else:
                raise ApiError(502, f"The runner stopped before answering: {ev.reason}",
                               type="server_error", code="runner_lost")
    except ApiError as exc:
        outcome.status, outcome.http_status, outcome.error_type = "error", exc.status, exc.code
        raise
    finally:
        opened.runner.in_flight -= 1
        _spawn(_write_record(state, outcome))
    body = "".join(parts)
    outcome.bytes_out = len(body)
    if opened.start.status >= 400:
        outcome.status, outcome.error_type = "error", "engine_rejected"
        body = _as_error_envelope(body, opened.start.status)
    return body


def _as_error_envelope(body: str, status: int) -> str:
    """Engines disagree on error shapes; clients get OpenAI's envelope."""
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            err = parsed["error"]
            return json.dumps(error_body(str(err.get("message", "engine error")),
                                         str(err.get("type", "invalid_request_error")),
                                         err.get("code") if isinstance(err.get("code"), str) else None))
    except ValueError:
        pass
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps(error_body(body[:500] or "engine error", kind))


async def _write_record(state: AppState, outcome: _Outcome) -> None:
    try:
        async with state.db.session() as session:
            await add_request_record(session, outcome.record())
            await session.commit()
    except Exception:  # noqa: BLE001 - a failed record must not fail the request; it is logged
        log.exception("could not write request record %s", outcome.call.request_id)
