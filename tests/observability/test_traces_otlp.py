"""Traces through a real collector path: control plane and runner processes export OTLP/HTTP
to a receiver on loopback that decodes the protobuf requests (otlp_receiver.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from tests.conftest import Stack, _database
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.timeout(900)
MODEL = "smollm2-135m-instruct"

CP_STEPS = {
    "outpost.route",
    "outpost.queue_wait",
    "outpost.dispatch",
    "outpost.first_byte",
    "outpost.settle",
}


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OtlpReceiver]]:
    tmp = tmp_path_factory.mktemp("traced")
    db = _database("sqlite", tmp)
    url = next(db)
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            # Export within a fraction of a second, not the default 5 s batch delay.
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        cp = ControlPlaneProcess(tmp / "cp", url, extra_env=env).start()
        runner = RunnerProcess(cp, tmp / "runner", "traced", extra_env=env)
        try:
            api_key = cp.api_key()
            runner.start()
            runner_id = runner.wait_connected(api_key)
            yield Stack(cp, runner, api_key, url, runner_id), receiver
        finally:
            runner.stop()
            cp.stop()
            db.close()


def _trace_of(receiver: OtlpReceiver, request_id: str) -> list[ReceivedSpan]:
    """Every span of the request's trace, once the runner's engine span is in."""
    found: list[ReceivedSpan] = []

    def complete() -> bool:
        spans = receiver.snapshot()
        roots = [s for s in spans if s.attributes.get("outpost.request_id") == request_id]
        roots = [s for s in roots if s.name == "outpost.request"]
        if not roots:
            return False
        found[:] = [s for s in spans if s.trace_id == roots[0].trace_id]
        return {"outpost.settle", "outpost.runner.engine"} <= {s.name for s in found}

    wait_until(complete, 60, f"the trace of {request_id}")
    return found


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_one_trace_crosses_control_plane_tunnel_runner_and_engine(
    traced: tuple[Stack, OtlpReceiver], stream: bool
) -> None:
    stack, receiver = traced
    marker = f"MARKER{secrets.token_hex(8)}"
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    messages = [{"role": "user", "content": f"Repeat {marker} please"}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,  # type: ignore[arg-type]
        )
        text = raw.parse().choices[0].message.content or ""
    assert text
    request_id = raw.headers["x-request-id"]
    spans = _trace_of(receiver, request_id)
    by_name = {s.name: s for s in spans}

    root = by_name["outpost.request"]
    assert root.parent_id == ""  # one trace per request, rooted at the control plane
    assert root.service == "outpost-control-plane"
    assert root.attributes["outpost.status"] == "ok"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["outpost.runner_id"] == stack.runner_id
    assert root.attributes["gen_ai.usage.output_tokens"] >= 1
    assert root.attributes["outpost.stream"] is stream
    for step in CP_STEPS:
        assert by_name[step].parent_id == root.span_id, step

    # The tunnel hop: the runner's span sits under the control plane's dispatch span.
    runner_span = by_name["outpost.runner.stream"]
    assert runner_span.service == "outpost-runner"
    assert runner_span.parent_id == by_name["outpost.dispatch"].span_id
    assert runner_span.attributes["outpost.request_id"] == request_id
    engine = by_name["outpost.runner.engine"]
    assert engine.parent_id == runner_span.span_id

    # No prompt and no answer in any span: names, attributes, events, every string it carries.
    for s in spans:
        assert marker.encode() not in s.raw, s.name
        assert text.encode() not in s.raw or len(text) < 4, s.name
    assert not [b for b in receiver.bodies if marker.encode() in b]
    assert not [b for b in receiver.bodies if stack.api_key.encode() in b]
