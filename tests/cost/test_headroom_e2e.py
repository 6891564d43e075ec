"""Fair headroom end to end (issue 7): a light tenant's request starts at once beside a heavy
backlog.

Real parts only: the control plane under uvicorn (SQLite), one runner with the
embedded model on llama.cpp, ``--parallel 1`` and the default fair headroom
(one more engine slot, advertised in status frames). Tenant A holds the regular
slot with a long stream and has two more requests queued; tenant B, with
nothing in flight, gets the headroom slot: its short request completes while
A's first is still streaming and A's two still wait. Without headroom B would
wait for A's stream to end (tests/cost/test_scheduling_e2e.py shows that order).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, tenant_records, wait_until

MODEL = "smollm2-135m-instruct"


class Env:
    def __init__(
        self, cp: ControlPlaneProcess, runner_id: str, database_url: str, owner: str
    ) -> None:
        self.cp, self.runner_id, self.database_url, self.owner = cp, runner_id, database_url, owner
        self.admin = cp.cli(
            "keys", "create", "admin", "--tenant", "room-b", "--admin"
        ).splitlines()[-1]
        self.keys = {t: cp.api_key(t) for t in ("room-a", "room-b")}

    def get(self, path: str) -> dict:
        response = httpx.get(
            f"{self.cp.url}{path}", headers={"Authorization": f"Bearer {self.admin}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        return response.json()

    def slots(self) -> dict:
        return self.get("/api/fairness/service")["runners"][self.runner_id]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("headroom")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url).start()
    runner = RunnerProcess(
        cp, tmp / "runner", "one-slot", args=["--parallel", "1", "--ctx", "1024"]
    )
    try:
        admin = cp.cli("keys", "create", "boot", "--admin").splitlines()[-1]
        runner.start()
        yield Env(cp, runner.wait_connected(admin), url, admin)
    finally:
        runner.stop()
        cp.stop()


def test_the_runner_advertises_one_slot_and_one_headroom_slot(env: Env) -> None:
    listed = httpx.get(
        f"{env.cp.url}/api/runners", headers={"Authorization": f"Bearer {env.owner}"}, timeout=10
    )
    runner = next(r for r in listed.json()["data"] if r["id"] == env.runner_id)
    assert (runner["capacity"], runner["headroom"]) == (1, 1)


def test_a_light_tenant_starts_in_the_headroom_while_the_heavy_backlog_waits(env: Env) -> None:
    a_streaming, a_done, seen = threading.Event(), threading.Event(), {}

    def hold() -> None:  # tenant A's first request: a long stream in the regular slot
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 600,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST",
            f"{env.cp.url}/v1/chat/completions",
            json=body,
            timeout=300,
            headers={"Authorization": f"Bearer {env.keys['room-a']}"},
        ) as r:
            seen["a_status"] = r.status_code
            chunks = r.iter_text()
            next(chunks)
            a_streaming.set()
            seen["a_tail"] = "".join(chunks)
        a_done.set()

    with httpx.Client(base_url=env.cp.url) as client, ThreadPoolExecutor(4) as pool:

        def post(tenant: str, max_tokens: int) -> httpx.Response:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            return client.post(
                "/v1/chat/completions",
                json=body,
                timeout=300,
                headers={"Authorization": f"Bearer {env.keys[tenant]}"},
            )

        holder = pool.submit(hold)
        assert a_streaming.wait(120), seen
        backlog = [pool.submit(post, "room-a", 8) for _ in range(2)]
        # A has a request in flight, so its others wait: the headroom is not for it.
        wait_until(lambda: env.slots()["queued"] == 2, 60, "tenant A's two requests queued")
        assert env.slots()["in_headroom"] == 0
        light = post("room-b", 8)
        # B finished while A's stream still ran and A's backlog still waited: it never queued.
        assert light.status_code == 200, light.text
        assert not a_done.is_set() and env.slots()["queued"] == 2
        for f in [holder, *backlog]:
            f.result(timeout=300)
    assert seen["a_status"] == 200 and all(f.result().status_code == 200 for f in backlog)
    wait_until(
        lambda: (
            len(tenant_records(env.database_url, "room-a")) == 3
            and len(tenant_records(env.database_url, "room-b")) == 1
        ),
        30,
        "request records written",
    )
    light_record = tenant_records(env.database_url, "room-b")[0]
    heavy_waits = sorted(r["queue_ms"] for r in tenant_records(env.database_url, "room-a"))
    assert light_record["queue_ms"] < heavy_waits[-1]
    snap = env.slots()
    assert (snap["in_flight"], snap["in_headroom"], snap["queued"]) == (0, 0, 0)
