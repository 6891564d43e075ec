"""A client that disconnects while its NON-streaming request is being generated (issue 7).

Real parts only: the control plane under uvicorn, one runner with the embedded
model on llama.cpp and a single slot. The request asks for far more tokens
than the test waits for (``ignore_eos``); its client closes the connection
once the engine is generating. The runner must abort the engine request, the
slot must be free for the next request, and the record must say the client
left, and llama.cpp's ``requests_processing`` gauge drops to 0 long before
3,500 tokens could have been generated.
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
        self.key = cp.api_key("leaver")

    def runner_row(self) -> dict:
        rows = httpx.get(
            f"{self.cp.url}/api/runners",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        ).json()["data"]
        return next(r for r in rows if r["id"] == self.runner_id)

    def runner_queue(self) -> dict:
        body = httpx.get(
            f"{self.cp.url}/api/fairness/service",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        ).json()
        return body["runners"].get(self.runner_id, {"queued": 0, "in_flight": 0})

    def records(self) -> list[dict]:
        """The request records of the tenant ``leaver``."""
        return tenant_records(self.database_url, "leaver")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("nonstream-disconnect")
    with one_slot_stack(tmp, 4096) as (cp, runner, runner_id, url):
        yield Env(cp, runner, runner_id, url)


def test_non_streaming_request_stops_on_the_runner_when_its_client_leaves(env: Env) -> None:
    wait_until(lambda: engine_processing(env.runner) == 0, 10, "an idle engine")
    time.sleep(2.5)  # the runner reports its served count every 2 s: let earlier requests' settle
    served_before = env.runner_row()["served_total"]
    payload = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 3500,
            "temperature": 0,
            "ignore_eos": True,
        }
    ).encode()
    sock = socket.create_connection(("127.0.0.1", env.cp.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: outpost\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {env.key}\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    # Generating now; 3,500 tokens take far longer than the waits below.
    wait_until(lambda: engine_processing(env.runner) == 1, 60, "the engine to start generating")
    assert env.runner_queue()["in_flight"] == 1
    time.sleep(1)  # a client that gives up after a while, with the engine well into its answer
    assert engine_processing(env.runner) == 1
    sock.close()

    # The runner aborted its engine request (it logs each stream's outcome), and the engine stopped.
    wait_until(
        lambda: "/v1/chat/completions smollm2-135m-instruct: cancelled" in env.runner.log(),
        10,
        "the runner to cancel the stream",
    )
    # Read slowly: llama.cpp's non-streaming handler looks for a closed connection when its wait
    # for results times out (1 s), and /metrics requests seem to restart that wait. Polled every
    # 0.1 s the engine never noticed here; every 1-2 s it stops.
    wait_until(
        lambda: engine_processing(env.runner) == 0,
        20,
        "the engine to stop generating",
        interval=2.0,
    )
    wait_until(
        lambda: env.runner_queue()["in_flight"] == 0, 10, "the control plane's slot to be free"
    )
    wait_until(lambda: len(env.records()) == 1, 15, "the request's record")
    [record] = env.records()
    assert (record["status"], record["http_status"], record["error_type"]) == (
        "cancelled",
        499,
        "client_disconnected",
    ), record
    assert record["runner_id"] == env.runner_id
    # It held the engine for a while: that engine time is priced, as for a stream whose client left.
    assert record["engine_share_s"] and record["engine_share_s"] > 0, record

    time.sleep(2.5)  # one status interval: a stream that ran to the end would be counted by now
    assert env.runner_row()["served_total"] == served_before
    # The slot is free: the next request is served at once.
    resp = httpx.post(
        f"{env.cp.url}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {env.key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert resp.status_code == 200, resp.text
