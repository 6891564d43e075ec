"""Tunnel behaviour under faults, with a real control plane, runner and engine.

The runner dials the control plane through a ChaosProxy, which can drop,
freeze or half-freeze the tunnel's TCP connections.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from harness.processes import ControlPlaneProcess, wait_until
from tests.tunnel.conftest import MODEL, TunnelEnv, make_env


def _sse_events(resp: httpx.Response):
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def test_cut_mid_stream_ends_with_error_event_and_done(env: TunnelEnv) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 400,
        "stream": True,
        "temperature": 0,
    }
    events: list = []
    with httpx.stream(
        "POST", f"{env.cp.url}/v1/chat/completions", json=body, headers=env.headers, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for ev in _sse_events(resp):
            events.append(ev)
            if len(events) == 3:
                env.proxy.cut()
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "runner_lost"
    assert not any(
        isinstance(e, dict) and e.get("choices", [{}])[0].get("finish_reason") for e in events[:-2]
    )


def test_cut_before_first_byte_is_retried_and_succeeds(env: TunnelEnv) -> None:
    env.proxy.freeze("up")  # the request reaches the runner; no answer gets back
    result: dict = {}

    def call() -> None:
        result["resp"] = env.chat(max_tokens=4)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)
    env.proxy.cut()
    env.proxy.thaw()
    t.join(60)
    resp = result["resp"]
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] is not None


def test_twenty_forced_reconnects_lose_nothing_and_duplicate_nothing(env: TunnelEnv) -> None:
    baseline = env.runner_state()["served_total"]
    ok = 0
    for _ in range(20):
        env.proxy.cut()
        t0 = time.monotonic()
        resp = env.chat(max_tokens=2)
        assert resp.status_code == 200, resp.text
        # The control plane is reachable at once; the runner must be back within 5 s.
        assert time.monotonic() - t0 < 5.0
        ok += 1
    # The runner counts streams it answered to the end: exactly one per request.
    wait_until(
        lambda: env.runner_state()["served_total"] == baseline + ok,
        15,
        "runner's served count to match the client's",
    )
    time.sleep(2.5)  # one more status interval: the count must not grow further
    assert env.runner_state()["served_total"] == baseline + ok


def test_control_plane_restart_runner_reconnects_by_itself(env: TunnelEnv) -> None:
    assert env.cp.stop() in (
        0,
        -signal.SIGTERM,
    )  # uvicorn re-raises the signal after a clean shutdown
    cp2 = ControlPlaneProcess(
        env.cp.state_dir, env.cp.env["OUTPOST_DATABASE_URL"], port=env.cp.port
    ).start()
    try:
        env.cp = cp2
        env.wait_connected(timeout=30)
        assert env.chat().status_code == 200
    finally:
        env.cp = cp2


def test_sigterm_drains_live_streams(env: TunnelEnv) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a poem about the sea."}],
        "max_tokens": 64,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    events: list = []
    with httpx.stream(
        "POST", f"{env.cp.url}/v1/chat/completions", json=body, headers=env.headers, timeout=60
    ) as resp:
        for ev in _sse_events(resp):
            events.append(ev)
            if len(events) == 2:
                env.runner.proc.send_signal(signal.SIGTERM)
    assert events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    finishes = [
        c["finish_reason"] for e in events if isinstance(e, dict) for c in e.get("choices", [])
    ]
    assert "length" in finishes or "stop" in finishes
    assert env.runner.proc.wait(30) == 0


def test_idle_runner_exits_promptly_on_sigterm(env: TunnelEnv) -> None:
    t0 = time.monotonic()
    env.runner.proc.send_signal(signal.SIGTERM)
    assert env.runner.proc.wait(10) == 0
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"idle runner took {elapsed:.2f}s to exit"


def test_slow_reader_does_not_stall_other_streams(tmp_path: Path) -> None:
    env = make_env(
        tmp_path,
        runner_args=["--connections", "1"],
        cp_env={"OUTPOST_TUNNEL_STREAM_WINDOW": str(16 * 1024)},
    )
    slow = socket.socket()
    try:
        # A client with a tiny receive buffer that never reads its response.
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", env.cp.port))
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Write an essay."}],
                "max_tokens": 1000,
                "stream": True,
                "ignore_eos": True,
            }
        ).encode()
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {env.admin_key}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(1.0)
        for _ in range(3):
            resp = env.chat(max_tokens=8)
            assert resp.status_code == 200, resp.text
    finally:
        slow.close()
        env.runner.stop(timeout=10)
        env.proxy.close()
        env.cp.stop()


def test_dead_peer_is_detected_within_15_seconds(env: TunnelEnv) -> None:
    env.proxy.freeze()
    t0 = time.monotonic()
    wait_until(
        lambda: not env.runner_state()["connected"], 20, "control plane to notice the dead peer"
    )
    elapsed = time.monotonic() - t0
    assert elapsed <= 15.5, f"dead peer noticed after {elapsed:.1f}s"
    env.proxy.thaw()
    env.proxy.cut()
    env.wait_connected(timeout=30)
    assert env.chat().status_code == 200


def test_revoked_runner_is_dropped_and_refused(env: TunnelEnv) -> None:
    resp = httpx.post(
        f"{env.cp.url}/api/runners/{env.runner_id}/revoke", headers=env.headers, timeout=10
    )
    assert resp.status_code == 200 and resp.json()["revoked_at"]
    # Terminal close: the runner stops instead of reconnecting forever.
    assert env.runner.proc.wait(20) == 2
    assert "revoked" in env.runner.log()
    r = env.chat()
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_runner_available"
