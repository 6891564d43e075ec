"""Links that flap: control plane and runner in their own network namespaces, steady load, a
partition.

Every client request must end in an answer or a clear error (an OpenAI error
envelope), every answer must be recorded exactly once, and the runner must be
back within a bound once the partition heals. The longer soak with a partition
every minute is bench/bench_flapping.py.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.network.conftest import MODEL
from tests.network.netns import FaultProxy, Namespace, netns_unavailable
from tests.utils import ControlPlaneProcess, RunnerProcess, _tool, tenant_records, wait_until

PING = ["--ping-interval-s", "1", "--ping-timeout-s", "2"]
#: Runner backoff is capped at 15 s (runner/tunnel.py) and a dial blocked by the partition may
#: take up to its 10-s open timeout: the runner must be back within this after the link heals.
RECONNECT_BOUND_S = 30.0


class NsControlPlane(ControlPlaneProcess):
    def __init__(self, ns: Namespace, tmp: Path) -> None:
        super().__init__(
            tmp / "cp",
            f"sqlite+aiosqlite:///{tmp / 'cp.db'}",
            shared_pool=False,
            extra_env={
                "OUTPOST_HOST": "0.0.0.0",
                "OUTPOST_TUNNEL_PING_INTERVAL_S": "1",
                "OUTPOST_TUNNEL_PING_TIMEOUT_S": "2",
            },
        )
        self.ns = ns
        self.url = f"http://{ns.ip}:{self.port}"

    def start(self) -> NsControlPlane:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.ns.prefix(), *_tool("control-plane"), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200,
            60,
            f"control plane in {self.ns.name}\n{self.log()}",
        )
        return self


class NsRunner(RunnerProcess):
    def __init__(self, ns: Namespace, cp: ControlPlaneProcess, tmp: Path, url: str) -> None:
        super().__init__(
            cp, tmp / "runner", "flappy", url=url, args=["--parallel", "2", "--ctx", "2048", *PING]
        )
        self.ns = ns

    def start(self, token: str | None = None) -> NsRunner:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "OUTPOST_DATABASE_URL"}
        env["OUTPOST_ENROLLMENT_TOKEN"] = token or self.cp.enrollment_token(self.name)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.ns.prefix(),
                    *_tool("runner"),
                    "local-runner",
                    "--control-plane",
                    self.url,
                    "--state-dir",
                    str(self.state_dir),
                    "--threads",
                    "1",
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self


@dataclass
class Load:
    """Clients sending one short chat after another until stopped; every outcome kept."""

    url: str
    key: str
    answered: list[str] = field(default_factory=list)  # x-request-id of each 200 with a reply
    errors: list[tuple[int, str]] = field(default_factory=list)  # status, error code: clear errors
    unclear: list[str] = field(default_factory=list)  # anything else: hangs, bad bodies
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, n: int) -> None:
        with httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.key}"}
        ) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                body = {
                    "model": MODEL,
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": f"w{n} r{i}"}],
                }
                try:
                    resp = c.post("/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    self.unclear.append(f"{type(exc).__name__}: {exc}")
                    continue
                try:
                    data = resp.json()
                except ValueError:
                    self.unclear.append(f"{resp.status_code} non-JSON body {resp.text[:100]!r}")
                    continue
                if resp.status_code == 200 and data.get("choices"):
                    self.answered.append(resp.headers["x-request-id"])
                elif resp.status_code >= 400 and isinstance(data.get("error"), dict):
                    self.errors.append((resp.status_code, str(data["error"].get("code"))))
                    time.sleep(0.2)
                else:
                    self.unclear.append(f"{resp.status_code} {resp.text[:100]!r}")


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[Namespace, Namespace]]:
    if (reason := netns_unavailable()) is not None:
        pytest.skip(reason)
    cp_ns, runner_ns = Namespace(subnet=231).create(), Namespace(subnet=232).create()
    try:
        yield cp_ns, runner_ns
    finally:
        cp_ns.destroy()
        runner_ns.destroy()


def test_requests_survive_a_partition_and_the_runner_comes_back(
    tmp_path: Path, topology: tuple[Namespace, Namespace]
) -> None:
    cp_ns, runner_ns = topology
    cp = NsControlPlane(cp_ns, tmp_path).start()
    # The runner's only way out: the root namespace's fault proxy, 50 ms +-25 ms each way, 2 %
    # stalls.
    proxy = FaultProxy(
        runner_ns.host_ip, (cp_ns.ip, cp.port), delay_s=0.05, jitter_s=0.05, loss=0.02
    ).start()
    runner = NsRunner(runner_ns, cp, tmp_path, f"http://{runner_ns.host_ip}:{proxy.port}")
    load = Load(cp.url, "")
    threads: list[threading.Thread] = []
    try:
        load.key = cp.api_key()
        runner.start()
        runner_id = runner.wait_connected(load.key)
        threads = [threading.Thread(target=load.worker, args=(n,), daemon=True) for n in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: len(load.answered) >= 3, 60, "answers before the partition")
        before = len(load.answered)

        runner_ns.partition()
        wait_until(
            lambda: not _connected(cp, load.key, runner_id),
            20,
            "the control plane to drop the runner",
        )
        time.sleep(3)  # the runner's redials meet the dead link too
        runner_ns.heal()
        healed = time.monotonic()
        wait_until(
            lambda: _connected(cp, load.key, runner_id),
            RECONNECT_BOUND_S,
            "the runner to come back",
        )
        back_s = time.monotonic() - healed
        answered_at_heal = len(load.answered)
        wait_until(
            lambda: len(load.answered) >= answered_at_heal + 3, 60, "answers after the partition"
        )
    finally:
        load.stop.set()
        for t in threads:
            t.join(90)
        runner.stop(timeout=15)
        proxy.close()
    try:
        assert not any(t.is_alive() for t in threads), "a client request never ended"
        assert load.unclear == [], load.unclear
        assert before >= 3 and len(load.answered) >= answered_at_heal + 3
        assert all(status in (429, 502, 503, 504) for status, _ in load.errors), load.errors
        # Nothing answered is lost or duplicated: one ok record per answer, and no ok record
        # unanswered.
        answered = set(load.answered)
        assert len(answered) == len(load.answered)

        def ok_ids() -> list[str]:
            return [
                r["id"] for r in tenant_records(cp.database_url, "default") if r["status"] == "ok"
            ]

        wait_until(lambda: set(ok_ids()) >= answered, 15, "the answers' request records")
        assert sorted(ok_ids()) == sorted(answered)
        print(
            f"\nanswered {len(answered)}, clear errors {len(load.errors)} "
            f"{sorted(set(load.errors))}, "
            f"runner back {back_s:.1f}s after the heal, proxy stalls {proxy.stalls}"
        )
    finally:
        cp.stop()


def _connected(cp: ControlPlaneProcess, key: str, runner_id: str) -> bool:
    data = httpx.get(
        f"{cp.url}/api/runners", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).json()["data"]
    return any(r["id"] == runner_id and r["connected"] for r in data)
