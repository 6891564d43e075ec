"""A control plane and a runner in two network namespaces, and the load that runs across them.

Shared by tests/network/test_flapping.py and bench/bench_flapping.py: the runner reaches the
control plane only through harness.netns's fault-injecting proxy.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.netns import Namespace
from harness.processes import ControlPlaneProcess, RunnerProcess, _tool, wait_until

__all__ = [
    "MODEL",
    "PING",
    "RECONNECT_BOUND_S",
    "Load",
    "NsControlPlane",
    "NsRunner",
    "connected",
]

#: The embedded model every runner of these topologies serves.
MODEL = "smollm2-135m-instruct"
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


def connected(cp: ControlPlaneProcess, key: str, runner_id: str) -> bool:
    data = httpx.get(
        f"{cp.url}/api/runners", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).json()["data"]
    return any(r["id"] == runner_id and r["connected"] for r in data)
