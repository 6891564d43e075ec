"""A streamed answer whose headers go out before the runner answers: proxy-proof streaming.

A streamed request may wait up to ``OUTPOST_SCHEDULER_QUEUE_TIMEOUT_S`` in the
fair queue and ``OUTPOST_FIRST_BYTE_TIMEOUT_S`` for its first byte; a reverse
proxy in front of the control plane cuts a response that sends nothing for its
read timeout (nginx 60 s, Cloudflare 100 s). A stream not answered within
``OUTPOST_STREAM_HEADERS_AFTER_S`` (5 s) therefore gets its headers (200,
``text/event-stream``, ``X-Accel-Buffering: no``, ``Cache-Control: no-cache``)
and then an SSE comment, ``: keep-alive``, every ``OUTPOST_STREAM_KEEPALIVE_S``
while it waits. Its status has gone out: an error after that (no runner, queue
timeout, an engine's 4xx) is sent as an SSE ``error`` event in OpenAI's
envelope, then the stream ends (docs/api.md "Streaming behind a proxy").

The request's opening (admission, failover) runs in a task of its own under
its :class:`~control_plane.openai.lifecycle.RequestLife`, which settles it
whatever ends it; this response only waits for it, and cancels it if the
response ends first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from outpost.control_plane.errors import ApiError, sse_error_event

__all__ = ["KEEPALIVE", "STREAM_HEADERS", "EarlyStream", "respond_early"]

log = logging.getLogger("outpost.serving")

KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"
#: Headers every streamed answer carries: no proxy buffering, no caching.
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EarlyStream(Response):
    """Headers now, keep-alives while ``opening`` runs, then the response it resolves to."""

    media_type = "text/event-stream"

    def __init__(
        self,
        opening: asyncio.Future[Response],
        interval_s: float,
        headers: dict[str, str],
    ) -> None:
        super().__init__(headers={**headers, **STREAM_HEADERS})
        # The length is not known: chunked, as every stream (Response set it to 0 for no body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.opening, self.interval_s = opening, interval_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            inner = await self._wait(send)
        except ApiError as exc:
            await _end_with(send, sse_error_event(exc.message, exc.type, exc.code) + _DONE)
            return
        except Exception:  # a bug: the status has gone, so the client hears it as an event
            log.exception("streamed request failed after its early headers")
            message = "Internal error; see the server log with this request's x-request-id."
            await _end_with(
                send, sse_error_event(message, "server_error", "internal_error") + _DONE
            )
            return
        finally:
            if not self.opening.done():
                self.opening.cancel()  # the response ended first: the lifecycle settles it
        if inner.status_code >= 400 or not inner.media_type == "text/event-stream":
            # An answer that is not a stream (an engine's refusal): its envelope as an event.
            await _end_with(send, _as_event(bytes(inner.body)) + _DONE)
            if inner.background is not None:
                await inner.background()
            return
        await inner(scope, receive, _without_start(send))

    async def _wait(self, send: Send) -> Response:
        while True:
            done, _ = await asyncio.wait({self.opening}, timeout=self.interval_s)
            if done:
                return self.opening.result()
            await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})


async def respond_early(
    opening: Coroutine[Any, Any, Response],
    *,
    after_s: float,
    interval_s: float,
    headers: dict[str, str],
) -> Response:
    """``opening``'s response if it comes within ``after_s``; else an :class:`EarlyStream` that
    sends its headers now and keep-alives until it comes. Only for streamed requests."""
    task = asyncio.ensure_future(opening)
    try:
        done, _ = await asyncio.wait({task}, timeout=after_s)
    except asyncio.CancelledError:
        task.cancel()  # the request's lifecycle(s) settle what was held
        raise
    if done:
        return task.result()
    return EarlyStream(task, interval_s, headers=headers)


def _without_start(send: Send) -> Callable[[Message], Awaitable[None]]:
    async def body_only(message: Message) -> None:
        if message["type"] != "http.response.start":  # already sent, with the early headers
            await send(message)

    return body_only


async def _end_with(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _as_event(body: bytes) -> bytes:
    """An error envelope (``{"error": {...}}``) as an SSE event; else an engine error event."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return b"data: " + json.dumps(parsed, separators=(",", ":")).encode() + b"\n\n"
    return sse_error_event(body[:500].decode("utf-8", "replace"), "server_error", "engine_error")
