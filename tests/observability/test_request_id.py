"""Request ids on the wire and in log lines (no processes: the contract and the formatters)."""

from __future__ import annotations

import json
import logging

import pytest

from outpost.control_plane.tunnel.link import Link
from outpost.sdk.logfmt import (
    REQUEST_ID,
    JsonFormatter,
    TextFormatter,
    new_request_id,
    valid_request_id,
)
from outpost.sdk.protocol import FrameError, RequestFrame, encode_frame, parse_frame


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("req_0123456789abcdef0123", True),
        ("trace-1.2:3_x", True),
        ("a", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (None, False),
        ("has space", False),
        ("line\nbreak", False),
        ('quote"d', False),
        ("-leading-dash", False),
        ("ünïcode", False),
    ],
)
def test_which_incoming_ids_are_honoured(value: str | None, ok: bool) -> None:
    assert valid_request_id(value) is ok
    assert valid_request_id(new_request_id())


def test_request_frame_leaves_an_absent_id_off_the_wire() -> None:
    bare = RequestFrame(
        stream_id=1, path="/v1/chat/completions", model="m", body="{}", body_length=2
    )
    assert "request_id" not in json.loads(
        encode_frame(bare)
    )  # a runner that predates the field accepts it
    tagged = bare.model_copy(update={"request_id": "trace-1"})
    assert json.loads(encode_frame(tagged))["request_id"] == "trace-1"
    assert parse_frame(encode_frame(tagged)) == tagged
    forged = json.loads(encode_frame(tagged)) | {"request_id": "two words"}
    with pytest.raises(FrameError):
        parse_frame(json.dumps(forged))


@pytest.mark.parametrize("capabilities", [frozenset(), frozenset({"request-id"})])
async def test_the_control_plane_sends_the_id_only_to_runners_that_announced_it(
    capabilities: frozenset[str],
) -> None:
    sent: list[str] = []

    async def send_text(text: str) -> None:
        sent.append(text)

    async def close(code: int, reason: str) -> None:
        pass

    link = Link("run_1", "s", send_text, 4, close, capabilities=capabilities)
    await link.open_stream(
        path="/v1/chat/completions", model="m", body="{}", stream=False, request_id="trace-2"
    )
    frame = json.loads(sent[0])
    assert frame.get("request_id") == ("trace-2" if capabilities else None)
    assert ("request_id" in frame) is bool(capabilities)


def test_log_lines_carry_the_request_id_of_their_task() -> None:
    record = logging.LogRecord("outpost.x", logging.INFO, __file__, 1, "served %s", ("it",), None)
    token = REQUEST_ID.set("trace-3")
    try:
        record.request_id = REQUEST_ID.get()  # what the handler's filter does
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter("runner").format(record))
    assert line | {"ts": None} == {
        "ts": None,
        "level": "info",
        "logger": "outpost.x",
        "process": "runner",
        "msg": "served it",
        "request_id": "trace-3",
    }
    assert TextFormatter().format(record).endswith("served it [trace-3]")


def test_http_series_stay_bounded_whatever_the_client_sends() -> None:
    from prometheus_client import generate_latest

    from outpost.control_plane.observability.metrics import ControlPlaneMetrics
    from tests.observability.conftest import samples

    metrics = ControlPlaneMetrics()
    for i in range(100):
        metrics.observe_http(f"X{i}", "unmatched", 405, 0.001)
    series = {
        labels: v
        for (name, labels), v in samples(generate_latest(metrics.registry).decode()).items()
        if name == "outpost_http_requests_total"
    }
    assert series == {
        frozenset({("method", "OTHER"), ("route", "unmatched"), ("status", "405")}): 100
    }
