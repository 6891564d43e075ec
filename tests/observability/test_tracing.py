"""Span shape and the traceparent contract, in process: the SDK's in-memory exporter, no
collector (test_traces_otlp.py has the real path across processes)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from outpost.control_plane.observability.tracing import NO_TRACE, request_trace
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.routing.routing import RouteRequest
from outpost.control_plane.tunnel.link import Link
from outpost.runner.engine_client import HttpxEngineClient
from outpost.runner.relay import EngineEndpoint, relay
from outpost.runner.streams import OutboundStream
from outpost.runner.tracing import engine_trace_headers, stream_span
from outpost.sdk.otel import TRACEPARENT, tracing_wanted, use_provider
from outpost.sdk.protocol import (
    CAPABILITIES,
    FrameError,
    RequestFrame,
    Usage,
    encode_frame,
    parse_frame,
)

MARKER = "MARKER-d41d8cd98f00b204"
GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_provider(provider)
    try:
        yield exporter
    finally:
        use_provider(None)
        provider.shutdown()


def _call() -> InferenceCall:
    body = json.dumps({"messages": [{"role": "user", "content": MARKER}]})
    return InferenceCall(
        tenant_id="t1", api_key_id="key_1", route=RouteRequest(model="m1"), body=body, stream=True
    )


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ],
)
def test_traces_are_off_unless_the_environment_asks(env: dict[str, str], on: bool) -> None:
    assert tracing_wanted(env) is on


def test_off_means_one_shared_no_op() -> None:
    use_provider(None)
    assert request_trace(_call(), "m1") is NO_TRACE


def test_a_request_is_one_trace_with_its_steps_under_the_root(
    spans: InMemorySpanExporter,
) -> None:
    trace = request_trace(_call(), "m1")
    trace.attempt("run_a")
    trace.admitted(0.25)
    first_dispatch = TRACEPARENT.get()
    trace.dispatched()
    trace.fail_over()  # the first runner failed before its first byte
    trace.attempt("run_b")
    trace.admitted(0.0)
    assert TRACEPARENT.get() != first_dispatch  # the retry goes out under its own dispatch
    trace.dispatched()
    trace.opened(200)
    trace.settling()
    usage = Usage(prompt_tokens=7, completion_tokens=3)
    trace.settled(
        status="ok", http_status=200, error_type=None, usage=usage, attempts=2, runner_id="run_b"
    )
    done = spans.get_finished_spans()
    root = next(s for s in done if s.name == "outpost.request")
    assert {s.context.trace_id for s in done} == {root.context.trace_id}
    assert all(
        s.parent is not None and s.parent.span_id == root.context.span_id
        for s in done
        if s is not root
    )
    names = [s.name for s in done if s is not root]
    assert names.count("outpost.route") == 2 and names.count("outpost.dispatch") == 2
    assert {"outpost.queue_wait", "outpost.first_byte", "outpost.settle"} <= set(names)
    dispatches = [s for s in done if s.name == "outpost.dispatch"]
    assert dispatches[0].status.status_code.name == "ERROR"  # the failed-over attempt
    tp = TRACEPARENT.get()
    flags = int(dispatches[1].context.trace_flags)
    assert flags & 1  # sampled: the runner records its part too
    assert tp == f"00-{root.context.trace_id:032x}-{dispatches[1].context.span_id:016x}-{flags:02x}"
    assert root.attributes is not None
    assert root.attributes["gen_ai.usage.input_tokens"] == 7
    assert root.attributes["outpost.attempts"] == 2
    assert [e.name for e in root.events] == ["failover"]
    for s in done:  # the body was never read: no prompt in any attribute or event
        assert MARKER not in json.dumps(dict(s.attributes or {}))
        assert all(MARKER not in json.dumps(dict(e.attributes or {})) for e in s.events)


def test_a_cancelled_request_still_ends_its_trace(spans: InMemorySpanExporter) -> None:
    trace = request_trace(_call(), "other")
    trace.attempt("run_a")
    trace.abandoned()
    done = {s.name: s for s in spans.get_finished_spans()}
    assert set(done) == {"outpost.request", "outpost.route", "outpost.queue_wait"}
    assert (done["outpost.request"].attributes or {})["outpost.status"] == "cancelled"


@pytest.mark.parametrize(
    "value",
    [
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id: invalid by the spec
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        GOOD.upper(),
        GOOD + "\n",
        GOOD + "-extra",
        "ff" + GOOD[2:],
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
        "x" * 10_000,
    ],
)
def test_a_rogue_traceparent_is_refused_as_a_frame_error(value: str) -> None:
    frame = json.loads(
        encode_frame(
            RequestFrame(
                stream_id=1, path="/v1/chat/completions", model="m", body="", body_length=0
            )
        )
    )
    with pytest.raises(FrameError):
        parse_frame(json.dumps(frame | {"traceparent": value}))
    assert parse_frame(json.dumps(frame | {"traceparent": GOOD})).traceparent == GOOD  # type: ignore[union-attr]
    assert "traceparent" not in frame  # absent: an old runner's frame is unchanged


@pytest.mark.parametrize("capabilities", [CAPABILITIES - {"traceparent"}, CAPABILITIES])
async def test_the_traceparent_goes_only_to_runners_that_announced_it(
    capabilities: frozenset[str],
) -> None:
    sent: list[str] = []

    async def send_text(text: str) -> None:
        sent.append(text)

    async def close(code: int, reason: str) -> None:
        pass

    link = Link("run_1", "s", send_text, 4, close, capabilities=capabilities)
    token = TRACEPARENT.set(GOOD)
    try:
        await link.open_stream(path="/v1/chat/completions", model="m", body="{}", stream=False)
    finally:
        TRACEPARENT.reset(token)
    frame = json.loads(sent[0])
    assert frame.get("traceparent") == (GOOD if "traceparent" in capabilities else None)


def test_the_runner_joins_the_trace_and_hands_the_engine_its_span(
    spans: InMemorySpanExporter,
) -> None:
    frame = RequestFrame(
        stream_id=3,
        path="/v1/chat/completions",
        model="m",
        body=MARKER,
        body_length=len(MARKER),
        request_id="req_1",
        traceparent=GOOD,
    )
    with stream_span(frame):
        headers = engine_trace_headers()
    done = {s.name: s for s in spans.get_finished_spans()}
    stream, engine = done["outpost.runner.stream"], done["outpost.runner.engine"]
    assert f"{stream.context.trace_id:032x}" == GOOD.split("-")[1]
    assert stream.parent is not None and f"{stream.parent.span_id:016x}" == GOOD.split("-")[2]
    assert engine.parent is not None and engine.parent.span_id == stream.context.span_id
    ctx = engine.context
    assert headers == {
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    }
    assert all(MARKER not in json.dumps(dict(s.attributes or {})) for s in done.values())


def test_without_traces_the_engine_gets_no_header() -> None:
    use_provider(None)
    frame = RequestFrame(
        stream_id=3, path="/v1/chat/completions", model="m", body="", body_length=0
    )
    with stream_span(frame):
        assert engine_trace_headers() == {}


class _Wire:
    def __init__(self) -> None:
        self.frames: list[object] = []

    async def send(self, frame: object) -> None:
        self.frames.append(frame)


async def test_the_relay_sends_the_engine_its_traceparent(spans: InMemorySpanExporter) -> None:
    """The runner's real relay, with a fake engine at its injected seam (httpx's
    MockTransport): the request reaching the engine carries the engine span's traceparent."""
    seen: list[httpx.Request] = []

    def engine(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        return httpx.Response(200, json=answer)

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": MARKER}]})
    frame = RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model="m",
        body=body,
        body_length=len(body),
        traceparent=GOOD,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
        with stream_span(frame):
            endpoint = EngineEndpoint("http://engine.test", {"Authorization": "Bearer e"})
            await relay(OutboundStream(frame, _Wire().send), endpoint, HttpxEngineClient(http))
    done = {s.name: s for s in spans.get_finished_spans()}
    ctx = done["outpost.runner.engine"].context
    assert seen[0].headers["traceparent"] == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    )
    assert GOOD.split("-")[1] == f"{ctx.trace_id:032x}"
    assert seen[0].headers["authorization"] == "Bearer e"  # the engine's own header is kept
