"""A client that hangs up in the middle of a STREAMED answer.

The SSE relay writes the body from the request's own task and learns of the
disconnect from a watch on ``receive()`` (openai/relay_response.py), not from
Starlette's task group. Real parts only: the control plane under uvicorn, one
runner with the embedded model on llama.cpp and a single slot. The client
reads the first tokens of a long answer (``ignore_eos``) and closes the
connection: the runner must abort the engine request, the slot must be free
for the next request, and the record must say the client left.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.processes import (
    ControlPlaneProcess,
    RunnerProcess,
    one_slot_stack,
    tenant_records,
    wait_until,
)
from tests.cluster.conftest import engine_processing

MODEL = "smollm2-135m-instruct"


class Env:
    def __init__(
        self, cp: ControlPlaneProcess, runner: RunnerProcess, runner_id: str, database_url: str
    ) -> None:
        self.cp, self.runner, self.runner_id, self.database_url = (
            cp,
            runner,
            runner_id,
            database_url,
        )
        self.admin = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        self.key = cp.api_key("stream-leaver")

    def in_flight(self) -> int:
        body = httpx.get(
            f"{self.cp.url}/api/fairness/service",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        ).json()
        return body["runners"].get(self.runner_id, {"in_flight": 0})["in_flight"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("stream-disconnect")
    with one_slot_stack(tmp, 4096) as (cp, runner, runner_id, url):
        yield Env(cp, runner, runner_id, url)


def _read_until(sock: socket.socket, marker: bytes, limit_s: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + limit_s
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen[:500]!r}"
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {seen[:500]!r}"
        seen += chunk
    return seen


def test_hanging_up_mid_stream_stops_the_engine_and_frees_the_slot(env: Env) -> None:
    wait_until(lambda: engine_processing(env.runner) == 0, 10, "an idle engine")
    payload = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 3500,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", env.cp.port), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: outpost\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {env.key}\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    head = _read_until(sock, b'"content"')  # tokens are arriving
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert engine_processing(env.runner) == 1
    sock.close()

    wait_until(
        lambda: "/v1/chat/completions smollm2-135m-instruct: cancelled" in env.runner.log(),
        10,
        "the runner to cancel the stream",
    )
    wait_until(
        lambda: engine_processing(env.runner) == 0,
        20,
        "the engine to stop generating",
        interval=1.0,
    )
    wait_until(lambda: env.in_flight() == 0, 10, "the control plane's slot to be free")
    wait_until(
        lambda: len(tenant_records(env.database_url, "stream-leaver")) == 1,
        15,
        "the request's record",
    )
    [record] = tenant_records(env.database_url, "stream-leaver")
    assert (record["status"], record["http_status"], record["error_type"]) == (
        "cancelled",
        200,
        "client_disconnected",
    ), record
    assert record["completion_tokens"] == 0 or record["completion_tokens"] < 3500, record

    # The slot is free: the next streamed request is answered to its end.
    with httpx.stream(
        "POST",
        f"{env.cp.url}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {env.key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "stream": True,
        },
    ) as resp:
        assert resp.status_code == 200
        assert "data: [DONE]" in "".join(resp.iter_text())
