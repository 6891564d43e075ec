"""The runner's spans of a relayed request (opt-in, docs/deploy.md "Traces").

A stream's span joins the control plane's trace through the ``traceparent`` of its
``request.v1`` (capability ``traceparent``); the engine call is its child, and the engine is
sent that child's ``traceparent`` header, so an engine that traces (vLLM does) continues the
same trace. Attributes are ids, the path, the served model and counts: never a body.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from outpost.sdk.otel import tracer
from outpost.sdk.protocol import RequestFrame

__all__ = ["engine_trace_headers", "stream_span"]

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_HEADERS: dict[str, str] = {}
# The engine call's span of the stream this task relays: ended with the stream's span.
_ENGINE_SPAN: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "outpost_engine_span", default=None
)


@contextlib.contextmanager
def stream_span(request: RequestFrame) -> Iterator[None]:
    """Around one stream's relay: its span, under the control plane's dispatch if it sent one."""
    t = tracer()
    if t is None:
        yield
        return
    parent = (
        _PROPAGATOR.extract({"traceparent": request.traceparent})
        if request.traceparent is not None
        else None
    )
    attributes: dict[str, str | int | bool] = {
        "outpost.endpoint": request.path,
        "outpost.stream_id": request.stream_id,
        "outpost.stream": request.stream,
        "outpost.sealed": request.sealed,
        "gen_ai.request.model": request.model,
    }
    if request.request_id is not None:
        attributes["outpost.request_id"] = request.request_id
    with t.start_as_current_span(
        "outpost.runner.stream", context=parent, kind=SpanKind.SERVER, attributes=attributes
    ):
        token = _ENGINE_SPAN.set(None)
        try:
            yield
        finally:
            engine = _ENGINE_SPAN.get()
            if engine is not None:
                engine.end()
            _ENGINE_SPAN.reset(token)


def engine_trace_headers() -> dict[str, str]:
    """The ``traceparent`` header for the engine request, under a new engine span (none when
    traces are off or no stream span is current)."""
    t = tracer()
    if t is None or not trace.get_current_span().get_span_context().is_valid:
        return _NO_HEADERS
    previous = _ENGINE_SPAN.get()
    if previous is not None:
        previous.end()
    span = t.start_span("outpost.runner.engine", kind=SpanKind.CLIENT)
    _ENGINE_SPAN.set(span)
    headers: dict[str, str] = {}
    _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
    return headers
