"""Two real control-plane replicas on one fresh PostgreSQL database and one Redis.

Each test gets its own database and its own Redis key prefix, so tests
never see each other's replicas, runners or rate-limit buckets.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from harness.databases import REDIS_URL
from harness.databases import database as _database
from harness.databases import drop_keys as _drop_keys
from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until

MODEL = "smollm2-135m-instruct"


@dataclass
class Cluster:
    a: ControlPlaneProcess
    b: ControlPlaneProcess
    admin_key: str
    prefix: str
    database_url: str
    tmp: Path
    runners: list[RunnerProcess] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def audit_key_file(self) -> Path:
        return self.tmp / "audit-key.json"

    def runner(
        self, url: str, name: str = "r1", connections: int = 1, parallel: int = 2
    ) -> RunnerProcess:
        """Start a runner dialling ``url`` (a replica or a load balancer); enrolled through
        replica A."""
        r = RunnerProcess(
            self.a,
            self.tmp / name,
            name,
            url=url,
            # No fair headroom: these tests count what waits when every slot is taken.
            args=[
                "--connections",
                str(connections),
                "--parallel",
                str(parallel),
                "--headroom",
                "0",
                "--ctx",
                "2048",
            ],
        )
        self.runners.append(r)
        return r.start()

    def connected(self, cp: ControlPlaneProcess, runner_id: str) -> bool:
        rows = httpx.get(f"{cp.url}/api/runners", headers=self.headers, timeout=5).json()["data"]
        return any(r["id"] == runner_id and r["connected"] for r in rows)

    def wait_seen_by_both(self, runner_id: str, timeout: float = 120) -> None:
        wait_until(
            lambda: self.connected(self.a, runner_id) and self.connected(self.b, runner_id),
            timeout,
            f"runner {runner_id} visible on both replicas",
        )

    def chat(
        self, cp: ControlPlaneProcess, max_tokens: int = 4, key: str | None = None, **extra: object
    ) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens,
            **extra,
        }
        return httpx.post(
            f"{cp.url}/v1/chat/completions",
            json=body,
            timeout=60,
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
        )


def sse_events(resp: httpx.Response) -> Iterator[object]:
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            yield data if data == "[DONE]" else json.loads(data)


def engine_url(runner: RunnerProcess) -> str:
    """The runner's engine on loopback, from its own log line."""
    match = re.search(r"engine \S+ ready (?:for \S+ )?at (http://127\.0\.0\.1:\d+)", runner.log())
    assert match, runner.log()
    return match.group(1)


def engine_processing(runner: RunnerProcess) -> float:
    """llama.cpp's ``llamacpp:requests_processing`` gauge: requests the engine is generating now."""
    return engine_gauge(runner, "requests_processing")


def engine_gauge(runner: RunnerProcess, name: str) -> float:
    """One of llama.cpp's ``llamacpp:<name>`` gauges (``requests_deferred``: waiting in the
    engine's queue)."""
    text = httpx.get(f"{engine_url(runner)}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"llamacpp:{name}"):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} gauge in:\n{text[:2000]}")


@contextmanager
def _cluster(tmp_path: Path, settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    db = _database("postgres", tmp_path)
    url = next(db)
    prefix = f"test-{secrets.token_hex(4)}"
    env = {
        "OUTPOST_REDIS_URL": REDIS_URL,
        "OUTPOST_CLUSTER_KEY_PREFIX": prefix,
        "OUTPOST_CLUSTER_HEARTBEAT_S": "0.5",
        "OUTPOST_CLUSTER_REPLICA_TTL_S": "3",
        # Replicas on one database sign the audit chain with one key.
        "OUTPOST_AUDIT_KEY_FILE": str(tmp_path / "audit-key.json"),
        "OUTPOST_RUNNER_WAIT_S": "10",
        **(settings or {}),
    }
    a = ControlPlaneProcess(tmp_path / "a", url, extra_env=env)
    b = ControlPlaneProcess(tmp_path / "b", url, extra_env=env)
    c: Cluster | None = None
    try:
        a.start()
        b.start()  # after A: A's start ran the migrations
        admin_key = a.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        c = Cluster(a, b, admin_key, prefix, url, tmp_path)
        yield c
    finally:
        for r in c.runners if c else []:
            r.stop(timeout=10)
        a.stop()
        b.stop()
        _drop_keys(prefix)
        db.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two fresh replicas, no runner (tests that kill a replica)."""
    with _cluster(tmp_path) as c:
        yield c


@dataclass
class OnB:
    cluster: Cluster
    runner: RunnerProcess
    runner_id: str


@pytest.fixture(scope="module")
def on_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnB]:
    """Two replicas and one runner whose only tunnel ends on B; shared by the tests of a module."""
    with _cluster(tmp_path_factory.mktemp("cluster")) as c:
        runner = c.runner(c.b.url)
        runner_id = runner.wait_connected(c.admin_key)
        c.wait_seen_by_both(runner_id)
        yield OnB(c, runner, runner_id)
