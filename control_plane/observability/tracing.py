"""One OpenTelemetry trace per inference request (opt-in; docs/deploy.md "Traces").

:class:`RequestLife` (openai/lifecycle.py) reports each step to a :class:`RequestTrace`;
the spans under the request's root are::

    outpost.request            accepted -> settled
      outpost.route            routing decision (again after each failover)
      outpost.queue_wait       the runner's admission queue
      outpost.dispatch         request frame sent -> the runner's part over; its traceparent
        (runner spans)           travels in ``request.v1`` and on to the engine
      outpost.first_byte       request frame sent -> the runner's response start
      outpost.settle           slot given back, counted, record submitted

What goes in an attribute is chosen here and nowhere else: ids, the served model's name,
statuses, counts and durations. Never a prompt, an answer, a key or a token: a request body
is not read by this module at all.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from outpost.sdk.otel import TRACEPARENT, tracer

if TYPE_CHECKING:
    from outpost.control_plane.openai.call import InferenceCall
    from outpost.sdk.protocol import Usage

__all__ = ["NO_TRACE", "RequestTrace", "request_trace"]


class RequestTrace:
    """Does nothing: the request path's trace when tracing is off (one shared instance)."""

    def attempt(self, runner_id: str) -> None:
        """A runner is picked: the routing decision ends, the queue wait starts."""

    def admitted(self, queue_wait_s: float) -> None:
        """Admission let the request through: dispatch starts (its traceparent goes out)."""

    def dispatched(self) -> None:
        """The request frame is sent: waiting for the runner's first byte."""

    def fail_over(self) -> None:
        """The runner failed before its first byte: a new routing decision starts."""

    def opened(self, status: int) -> None:
        """The runner's response start arrived."""

    def settling(self) -> None:
        """The one place a request ends has started."""

    def settled(
        self,
        *,
        status: str,
        http_status: int,
        error_type: str | None,
        usage: Usage,
        attempts: int,
        runner_id: str | None,
    ) -> None:
        """The request is over: every open span ends, the root with the outcome."""

    def abandoned(self) -> None:
        """Cancelled before a record was due: the spans end without an outcome."""


NO_TRACE = RequestTrace()


def _traceparent(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


class _LiveTrace(RequestTrace):
    def __init__(self, tracer: trace.Tracer, call: InferenceCall, model: str) -> None:
        self._tracer = tracer
        # The call began before the request path had its trace: the root starts when it did.
        now_ns = time.time_ns()
        begun_ns = now_ns - int(max(0.0, time.monotonic() - call.started) * 1e9)
        self._root = tracer.start_span(
            "outpost.request",
            kind=SpanKind.SERVER,
            start_time=begun_ns,
            attributes={
                "outpost.request_id": call.request_id,
                "outpost.tenant_id": call.tenant_id,
                "outpost.endpoint": call.path,
                "outpost.stream": call.stream,
                "outpost.sealed": call.sealed,
                "gen_ai.request.model": model,
            },
        )
        self._ctx = trace.set_span_in_context(self._root)
        self._step: Span | None = self._child("outpost.route", begun_ns)
        self._dispatch: Span | None = None
        self._first_byte: Span | None = None

    def _child(self, name: str, start_ns: int | None = None) -> Span:
        return self._tracer.start_span(name, context=self._ctx, start_time=start_ns)

    def _end_step(self) -> None:
        if self._step is not None:
            self._step.end()
            self._step = None

    def attempt(self, runner_id: str) -> None:
        if self._step is not None:
            self._step.set_attribute("outpost.runner_id", runner_id)
        self._end_step()
        self._step = self._child("outpost.queue_wait")
        self._step.set_attribute("outpost.runner_id", runner_id)

    def admitted(self, queue_wait_s: float) -> None:
        if self._step is not None:
            self._step.set_attribute("outpost.queue_wait_s", max(0.0, queue_wait_s))
        self._end_step()
        self._dispatch = self._child("outpost.dispatch")
        self._dispatch.set_attribute("outpost.tunnel", "request.v1")
        TRACEPARENT.set(_traceparent(self._dispatch))

    def dispatched(self) -> None:
        self._first_byte = self._child("outpost.first_byte")

    def fail_over(self) -> None:
        for span in (self._first_byte, self._dispatch, self._step):
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, "failover"))
                span.end()
        self._first_byte = self._dispatch = self._step = None
        self._root.add_event("failover")
        self._step = self._child("outpost.route")

    def opened(self, status: int) -> None:
        if self._first_byte is not None:
            self._first_byte.set_attribute("http.response.status_code", status)
            self._first_byte.end()
            self._first_byte = None

    def settling(self) -> None:
        self._end_open(error=False)
        self._step = self._child("outpost.settle")

    def _end_open(self, *, error: bool) -> None:
        for span in (self._first_byte, self._dispatch, self._step):
            if span is not None:
                if error:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
        self._first_byte = self._dispatch = self._step = None

    def settled(
        self,
        *,
        status: str,
        http_status: int,
        error_type: str | None,
        usage: Usage,
        attempts: int,
        runner_id: str | None,
    ) -> None:
        self._end_step()
        root = self._root
        root.set_attribute("outpost.status", status)
        root.set_attribute("http.response.status_code", http_status)
        root.set_attribute("outpost.attempts", attempts)
        root.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
        root.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
        if runner_id is not None:
            root.set_attribute("outpost.runner_id", runner_id)
        if error_type is not None:
            root.set_attribute("error.type", error_type)
            root.set_status(Status(StatusCode.ERROR, error_type))
        root.end()

    def abandoned(self) -> None:
        self._end_open(error=True)
        self._root.set_attribute("outpost.status", "cancelled")
        self._root.end()


def request_trace(call: InferenceCall, served_model: str) -> RequestTrace:
    """The request's trace: :data:`NO_TRACE` unless tracing is on (sdk/otel.py).

    ``served_model`` is the model's name when it is served, else ``"other"``: a client's
    model string is free text and becomes no attribute, as it becomes no metric label.
    """
    t = tracer()
    return NO_TRACE if t is None else _LiveTrace(t, call, served_model)
