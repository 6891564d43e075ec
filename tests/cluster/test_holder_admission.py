"""One fair queue per runner across replicas: the replica holding the runner admits for everyone.

Real processes throughout: two control planes on one PostgreSQL database and
one Redis, a runner with the embedded model on llama.cpp with ONE slot
(``--parallel 1``) whose only tunnel ends on replica B. Requests through A
are relayed to B and wait in B's queue for the runner, beside B's own.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx
import pytest
import redis

from harness.processes import ControlPlaneProcess, wait_until
from tests.cluster.conftest import (
    MODEL,
    REDIS_URL,
    Cluster,
    OnB,
    _cluster,
    engine_gauge,
    engine_processing,
)
from tests.cluster.lb import RoundRobinLB


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnB]:
    with _cluster(tmp_path_factory.mktemp("holder-admission")) as c:
        runner = c.runner(c.b.url, parallel=1)
        runner_id = runner.wait_connected(c.admin_key)
        c.wait_seen_by_both(runner_id)
        yield OnB(c, runner, runner_id)


def _queue(env: OnB, cp: ControlPlaneProcess) -> dict:
    """The runner's queue as ``cp``'s scheduler sees it (``GET /api/fairness/service``)."""
    body = httpx.get(
        f"{cp.url}/api/fairness/service", headers=env.cluster.headers, timeout=10
    ).json()
    return body["runners"].get(env.runner_id, {"queued": 0, "in_flight": 0, "abandoned": 0})


def _body(max_tokens: int, content: str = "Tell me a story.") -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


def _post(cp: ControlPlaneProcess, key: str, body: dict) -> httpx.Response:
    return httpx.post(
        f"{cp.url}/v1/chat/completions",
        json=body,
        timeout=300,
        headers={"Authorization": f"Bearer {key}"},
    )


class _EngineWatch:
    """Samples llama.cpp's gauges in a thread: the most ever generating and ever waiting in the
    engine."""

    def __init__(self, env: OnB) -> None:
        self.env, self.processing, self.deferred = env, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.processing = max(self.processing, engine_processing(self.env.runner))
                self.deferred = max(
                    self.deferred, engine_gauge(self.env.runner, "requests_deferred")
                )
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.02)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_requests_through_both_replicas_never_exceed_the_runners_one_slot(one_slot: OnB) -> None:
    env = one_slot
    c = env.cluster
    key = c.a.api_key("cap")
    wait_until(lambda: engine_processing(env.runner) == 0, 30, "an idle engine")
    results: list[httpx.Response] = []

    def send(cp: ControlPlaneProcess, max_tokens: int) -> None:
        results.append(_post(cp, key, _body(max_tokens)))

    with _EngineWatch(env) as watch:
        # A long request through A holds the one slot while the others queue.
        threads = [threading.Thread(target=send, args=(c.a, 160))]
        threads[0].start()
        wait_until(lambda: engine_processing(env.runner) == 1, 60, "the first request to run")
        threads += [
            threading.Thread(target=send, args=(c.a if i % 2 else c.b, 16)) for i in range(5)
        ]
        for t in threads[1:]:
            t.start()
        # Everything queues at B, the runner's holder: A admits nothing itself.
        wait_until(
            lambda: _queue(env, c.b)["queued"] == 5, 60, "requests from both replicas queued at B"
        )
        assert _queue(env, c.b)["in_flight"] == 1
        assert (_queue(env, c.a)["in_flight"], _queue(env, c.a)["queued"]) == (0, 0)

        # A client of A that leaves while its request waits in B's queue: it leaves B's queue.
        abandoned = _queue(env, c.b)["abandoned"]
        payload = json.dumps(_body(8)).encode()
        sock = socket.create_connection(("127.0.0.1", c.a.port), timeout=10)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: outpost\r\nContent-Type: "
            b"application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        wait_until(
            lambda: _queue(env, c.b)["queued"] == 6, 15, "the leaving client's request queued at B"
        )
        sock.close()
        wait_until(
            lambda: _queue(env, c.b)["abandoned"] == abandoned + 1,
            15,
            "B to drop the abandoned request",
        )
        assert _queue(env, c.b)["queued"] == 5 and len(results) == 0, "the queue drained too early"

        for t in threads:
            t.join(300)
    assert [r.status_code for r in results] == [200] * 6, [
        r.text for r in results if r.status_code != 200
    ]
    assert sorted(r.json()["usage"]["completion_tokens"] for r in results) == [16] * 5 + [160]
    # The engine never ran more than its one slot, and nothing ever waited in its own FCFS queue.
    assert watch.processing == 1 and watch.deferred == 0, (watch.processing, watch.deferred)
    wait_until(
        lambda: _queue(env, c.b)["in_flight"] == 0 and _queue(env, c.b)["queued"] == 0,
        15,
        "an empty queue",
    )


def test_vtc_order_holds_across_replicas(one_slot: OnB) -> None:
    """Tenant A floods through replica A; tenant B's one request through replica B goes before
    A's backlog."""
    env = one_slot
    c = env.cluster
    key_a, key_b = c.a.api_key("flood-a"), c.a.api_key("light-b")
    wait_until(lambda: engine_processing(env.runner) == 0, 30, "an idle engine")
    done: dict[str, float] = {}
    codes: dict[str, int] = {}

    def send(name: str, cp: ControlPlaneProcess, key: str, max_tokens: int) -> None:
        resp = _post(cp, key, _body(max_tokens))
        done[name], codes[name] = time.monotonic(), resp.status_code

    threads = [threading.Thread(target=send, args=("a0", c.a, key_a, 160))]
    threads[0].start()
    wait_until(lambda: engine_processing(env.runner) == 1, 60, "A's first request to run")
    for i in range(1, 4):  # A's backlog, one at a time so the arrival order is known
        threads.append(threading.Thread(target=send, args=(f"a{i}", c.a, key_a, 16)))
        threads[-1].start()
        wait_until(lambda i=i: _queue(env, c.b)["queued"] == i, 30, f"A's request {i} queued at B")
    threads.append(threading.Thread(target=send, args=("b", c.b, key_b, 16)))
    threads[-1].start()
    wait_until(lambda: _queue(env, c.b)["queued"] == 4, 30, "B's request queued behind A's backlog")
    assert "a0" not in done, (
        "A's first request finished before the queue formed; raise its max_tokens"
    )
    for t in threads:
        t.join(300)
    assert set(codes.values()) == {200}, codes
    order = sorted(done, key=done.__getitem__)
    # First come first served would give a0 a1 a2 a3 b. VTC: once a0 is charged, A's counter is
    # above B's (lifted to A's on arrival), so B goes next, whichever replica each request came
    # through.
    assert order[:2] == ["a0", "b"], order


def _holding_replicas(c: Cluster, runner_id: str) -> int:
    """How many replicas publish a tunnel of the runner in the registry."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries = [client.get(k) for k in client.scan_iter(match=f"{c.prefix}:replica:*")]
    finally:
        client.close()
    return sum(
        any(r["runner_id"] == runner_id for r in json.loads(e)["runners"]) for e in entries if e
    )


def test_a_runner_with_tunnels_on_both_replicas_has_one_queue(cluster: Cluster) -> None:
    """Two connections through a load balancer, one per replica: still one slot, one queue."""
    c = cluster
    lb = RoundRobinLB([c.a.port, c.b.port]).start()
    try:
        runner = c.runner(lb.url, connections=2, parallel=1)
        runner_id = runner.wait_connected(c.admin_key)
        c.wait_seen_by_both(runner_id)
        wait_until(lambda: _holding_replicas(c, runner_id) == 2, 30, "a tunnel on each replica")
        env = OnB(c, runner, runner_id)
        key = c.a.api_key("homed")
        results: list[httpx.Response] = []

        def send(cp: ControlPlaneProcess, max_tokens: int) -> None:
            results.append(_post(cp, key, _body(max_tokens)))

        with _EngineWatch(env) as watch:
            threads = [threading.Thread(target=send, args=(c.a, 120))]
            threads[0].start()
            wait_until(lambda: engine_processing(runner) == 1, 60, "the first request to run")
            threads += [
                threading.Thread(target=send, args=(c.b if i % 2 else c.a, 8)) for i in range(4)
            ]
            for t in threads[1:]:
                t.start()

            def queues() -> list[dict]:
                return [_queue(env, cp) for cp in (c.a, c.b)]

            wait_until(lambda: sum(q["queued"] for q in queues()) == 4, 60, "four requests queued")
            # All of them in one replica's queue (the lower replica id's), none in the other's.
            assert sorted((q["queued"], q["in_flight"]) for q in queues()) == [(0, 0), (4, 1)], (
                queues()
            )
            for t in threads:
                t.join(300)
        assert [r.status_code for r in results] == [200] * 5, [
            r.text for r in results if r.status_code != 200
        ]
        assert watch.processing == 1 and watch.deferred == 0, (watch.processing, watch.deferred)
    finally:
        lb.close()


def test_the_owners_queue_full_reaches_the_client_of_the_other_replica(tmp_path: Path) -> None:
    """One waiter allowed (the owner's bound): a second request through A gets B's 429 from A,
    as is."""
    with _cluster(tmp_path, {"OUTPOST_SCHEDULER_MAX_QUEUE": "1"}) as c:
        runner = c.runner(c.b.url, parallel=1)
        runner_id = runner.wait_connected(c.admin_key)
        c.wait_seen_by_both(runner_id)
        env = OnB(c, runner, runner_id)
        key = c.a.api_key("bounded")
        results: dict[str, httpx.Response] = {}

        def send(name: str, cp: ControlPlaneProcess, max_tokens: int) -> None:
            results[name] = _post(cp, key, _body(max_tokens))

        threads = [threading.Thread(target=send, args=("running", c.b, 160))]
        threads[0].start()
        wait_until(lambda: engine_processing(runner) == 1, 60, "the first request to run")
        threads.append(threading.Thread(target=send, args=("queued", c.a, 8)))
        threads[1].start()
        wait_until(lambda: _queue(env, c.b)["queued"] == 1, 30, "A's request queued at B")
        refused = _post(c.a, key, _body(8))
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == (
            "queue_full",
            "queue_full",
        ) and "is full" in error["message"]
        for t in threads:
            t.join(300)
        assert results["running"].status_code == results["queued"].status_code == 200
