"""A client that disconnects while its request is queued at the control plane (issue 7).

Real parts only: the control plane under uvicorn, one runner with the embedded
model on llama.cpp and a single slot (capacity 1). Tenant A's streaming
request holds the slot (``ignore_eos`` makes it generate exactly
``max_tokens``); tenant B queues a non-streaming and a streaming request
behind it over raw sockets and closes them, as a client that times out does;
tenant C queues one and stays. B's requests must leave the queue at once, never
reach the runner, and leave B's Virtual Token Counter untouched; C is served
after A, so no slot leaked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.processes import (
    ControlPlaneProcess,
    one_slot_stack,
    tenant_records,
    wait_until,
)
from outpost.control_plane.openai.disconnect import watch

MODEL = "smollm2-135m-instruct"


class Env:
    def __init__(
        self, cp: ControlPlaneProcess, runner_id: str, database_url: str, tmp: Path
    ) -> None:
        self.cp, self.runner_id, self.database_url, self.tmp = cp, runner_id, database_url, tmp
        self.admin = {
            t: cp.cli("keys", "create", "admin", "--tenant", t, "--admin").splitlines()[-1]
            for t in ("default", "gone-b")
        }
        self.keys = {t: cp.api_key(t) for t in ("gone-a", "gone-b", "gone-c")}

    def get(self, path: str, tenant: str = "default") -> dict:
        response = httpx.get(
            f"{self.cp.url}{path}",
            headers={"Authorization": f"Bearer {self.admin[tenant]}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def runner_queue(self, tenant: str = "default") -> dict:
        """This runner's queue as ``GET /api/fairness/service`` shows it to ``tenant``'s admin."""
        return self.get("/api/fairness/service", tenant)["runners"].get(
            self.runner_id, {"queued": 0, "in_flight": 0, "abandoned": 0, "counters": {}}
        )

    def served_total(self) -> int:
        """Streams the runner itself says it answered to the end (its status frames)."""
        return next(
            r["served_total"] for r in self.get("/api/runners")["data"] if r["id"] == self.runner_id
        )

    def records(self, tenant: str) -> list[dict]:
        return tenant_records(self.database_url, tenant)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("queue-disconnect")
    with one_slot_stack(tmp, 1024) as (cp, _runner, runner_id, url):
        yield Env(cp, runner_id, url, tmp)


async def test_watch_returns_on_the_disconnect_message_only() -> None:
    messages = iter(
        [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    )
    seen = []

    async def receive() -> dict:
        seen.append(message := next(messages))
        return message

    await watch(receive)()
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]


def _raw_request(env: Env, key: str, body: dict) -> socket.socket:
    """Send a whole HTTP request and return the open socket (the caller closes it unanswered)."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", env.cp.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: outpost\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def _chat(max_tokens: int, **extra: object) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }


def test_disconnected_queued_requests_never_reach_the_runner(env: Env) -> None:
    served_before = env.served_total()
    a_started, a_done, results = threading.Event(), threading.Event(), {}

    def fill() -> None:  # tenant A holds the only slot, streaming, so we know when it runs
        with httpx.stream(
            "POST",
            f"{env.cp.url}/v1/chat/completions",
            json=_chat(400, stream=True),
            headers={"Authorization": f"Bearer {env.keys['gone-a']}"},
            timeout=300,
        ) as r:
            results["a_status"] = r.status_code
            chunks = r.iter_text()
            next(chunks)
            a_started.set()
            results["a_body"] = "".join(chunks)
        a_done.set()

    def stay() -> None:  # tenant C queues behind A and waits for its answer
        results["c"] = httpx.post(
            f"{env.cp.url}/v1/chat/completions",
            json=_chat(4),
            timeout=300,
            headers={"Authorization": f"Bearer {env.keys['gone-c']}"},
        )

    threads = [threading.Thread(target=fill)]
    threads[0].start()
    assert a_started.wait(120), "tenant A's request never started"
    assert env.runner_queue()["in_flight"] == 1

    gone = [
        _raw_request(env, env.keys["gone-b"], _chat(8)),
        _raw_request(env, env.keys["gone-b"], _chat(8, stream=True)),
    ]
    wait_until(lambda: env.runner_queue()["queued"] == 2, 30, "tenant B's two requests to queue")
    threads.append(threading.Thread(target=stay))
    threads[1].start()
    wait_until(lambda: env.runner_queue()["queued"] == 3, 30, "tenant C's request to queue")
    assert not a_done.is_set(), "A finished before the queue formed; raise its max_tokens"

    for sock in gone:
        sock.close()
    wait_until(lambda: env.runner_queue()["abandoned"] == 2, 10, "B's requests to leave the queue")
    seen_by_b = env.get("/api/fairness/service", "gone-b")
    queue = seen_by_b["runners"][env.runner_id]
    assert (queue["queued"], queue["in_flight"]) == (1, 1), queue  # C still waits, A still runs
    assert not a_done.is_set(), "A finished before B left; the test did not exercise the queue"
    # B's lift on joining the queue was taken back: B has no counter on this runner at all (A and C
    # do).
    assert seen_by_b["tenant_id"] not in queue["counters"] and len(queue["counters"]) == 2, queue[
        "counters"
    ]

    for t in threads:
        t.join(300)
    assert results["a_status"] == 200 and results["a_body"].rstrip().endswith("data: [DONE]")
    assert results["c"].status_code == 200, results["c"].text
    assert results["c"].json()["usage"]["completion_tokens"] == 4

    wait_until(lambda: env.runner_queue()["in_flight"] == 0, 30, "the runner's slot to be free")
    final = env.runner_queue()
    assert (final["queued"], final["abandoned"]) == (0, 2), final
    # The runner answered exactly A and C: nothing of B's ever reached it.
    wait_until(lambda: env.served_total() == served_before + 2, 15, "the runner's status frame")
    time.sleep(1)
    assert env.served_total() == served_before + 2

    def b_recorded() -> bool:
        return len(env.records("gone-b")) == 2

    wait_until(b_recorded, 15, "B's request records")
    for record in env.records("gone-b"):
        assert record["runner_id"] is None, record
        assert (record["status"], record["http_status"], record["error_type"]) == (
            "error",
            499,
            "client_disconnected",
        ), record
        assert record["prompt_tokens"] == record["completion_tokens"] == 0
        assert not record["cost_usd"]
    assert all(
        r["runner_id"] == env.runner_id for r in env.records("gone-a") + env.records("gone-c")
    )
