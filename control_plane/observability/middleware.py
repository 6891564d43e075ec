"""Pure-ASGI middleware: a request id per HTTP request, and the HTTP metrics.

The id is the client's ``X-Request-Id`` when it is well formed (bounded, no
characters that could forge a log line), else a fresh ``req_…``. It is set in
:data:`sdk.logfmt.REQUEST_ID` for every log line of the request, sent to the
runner in ``request.v1``, and returned as ``X-Request-Id``.

A generated id also names the request's record (``/api/usage``, the audit
event); a client's own id cannot, since ids of records must be unique and
chosen by the server. When the two differ the record's id is returned as
``X-Outpost-Record-Id``.
"""

from __future__ import annotations

import contextvars
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outpost.control_plane.db.models import new_id
from outpost.control_plane.observability.metrics import ControlPlaneMetrics
from outpost.sdk.logfmt import REQUEST_ID, new_request_id, valid_request_id

__all__ = ["ObservabilityMiddleware", "record_id"]

_GENERATED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "outpost_request_id_generated", default=False
)


def record_id() -> str:
    """The id for this request's record: the request id if this server made it, else a fresh one."""
    rid = REQUEST_ID.get()
    return rid if rid is not None and _GENERATED.get() else new_id("req")


def _route(scope: Scope) -> str:
    # The template ("/api/runners/{runner_id}"), never the raw path: ids in
    # paths would make one time series per id.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: ControlPlaneMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        generated = not valid_request_id(incoming)
        rid = new_request_id() if generated else incoming
        assert rid is not None
        rid_bytes = rid.encode("latin-1")
        token, gen_token = REQUEST_ID.set(rid), _GENERATED.set(generated)
        status = 500  # an exception before the response started
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"
                ]
                answered = next(
                    (v for k, v in message.get("headers", ()) if k.lower() == b"x-request-id"), None
                )
                if answered is not None and answered != rid_bytes:
                    headers.append((b"x-outpost-record-id", answered))
                headers.append((b"x-request-id", rid_bytes))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.observe_http(
                scope["method"], _route(scope), status, time.perf_counter() - started
            )
            REQUEST_ID.reset(token)
            _GENERATED.reset(gen_token)
