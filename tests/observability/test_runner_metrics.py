"""The runner's opt-in metrics listener (--metrics-port), scraped around a real request."""

from __future__ import annotations

import socket

import httpx
import psutil

from tests.observability.conftest import ObservedStack, value
from tests.observability.test_metrics import CHAT, _chat


def test_runner_metrics_listen_on_loopback_only(observed: ObservedStack) -> None:
    assert observed.runner.proc is not None
    listening = [
        c.laddr
        for c in psutil.Process(observed.runner.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == observed.runner_metrics_port
    ]
    assert [a.ip for a in listening] == ["127.0.0.1"]
    assert (
        httpx.get(f"http://127.0.0.1:{observed.runner_metrics_port}/", timeout=5).status_code == 404
    )
    # Garbage (a port scan) is dropped without an answer, and the listener keeps serving.
    with socket.create_connection(("127.0.0.1", observed.runner_metrics_port), timeout=10) as sock:
        sock.sendall(
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
        )  # a TLS ClientHello's first bytes
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    assert value(observed.scrape_runner(), "process_resident_memory_bytes") > 0


def test_a_request_moves_the_runner_counters(observed: ObservedStack) -> None:
    before = observed.scrape_runner()
    assert value(before, "outpost_runner_tunnel_connections") == 2
    assert value(before, "outpost_runner_tunnel_connects_total") >= 2
    assert value(before, "outpost_runner_streams_in_flight") == 0
    engines = [dict(labels) for name, labels in before if name == "outpost_runner_engine_healthy"]
    assert engines and all(
        value(before, "outpost_runner_engine_healthy", **e) == 1 for e in engines
    )

    assert _chat(observed).status_code == 200
    after = observed.scrape_runner()
    assert (
        value(after, "outpost_runner_requests_total", path=CHAT, outcome="ok")
        - value(before, "outpost_runner_requests_total", path=CHAT, outcome="ok")
    ) == 1
    assert (
        value(after, "outpost_runner_request_duration_seconds_count", path=CHAT)
        - value(before, "outpost_runner_request_duration_seconds_count", path=CHAT)
    ) == 1
    # request.v1 in; response_start.v1, data.v1 and end.v1 (and status frames) out.
    assert value(after, "outpost_runner_tunnel_frames_total", direction="received") > value(
        before, "outpost_runner_tunnel_frames_total", direction="received"
    )
    assert (
        value(after, "outpost_runner_tunnel_bytes_total", direction="sent")
        - value(before, "outpost_runner_tunnel_bytes_total", direction="sent")
        > 100
    )
    assert value(after, "outpost_runner_streams_in_flight") == 0
