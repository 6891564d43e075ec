"""A control plane and one runner dialling it through a ChaosProxy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, wait_until
from tests.faults import ChaosProxy

MODEL = "smollm2-135m-instruct"


@dataclass
class TunnelEnv:
    cp: ControlPlaneProcess
    proxy: ChaosProxy
    runner: RunnerProcess
    admin_key: str
    runner_id: str
    tmp: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def runners(self) -> list[dict]:
        return httpx.get(f"{self.cp.url}/api/runners", headers=self.headers, timeout=5).json()[
            "data"
        ]

    def runner_state(self) -> dict:
        return next(r for r in self.runners() if r["id"] == self.runner_id)

    def chat(self, max_tokens: int = 2, timeout: float = 60, **extra: object) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens,
            **extra,
        }
        return httpx.post(
            f"{self.cp.url}/v1/chat/completions", json=body, headers=self.headers, timeout=timeout
        )

    def wait_connected(self, timeout: float = 30) -> None:
        wait_until(lambda: self.runner_state()["connected"], timeout, "runner to connect")


def make_env(
    tmp: Path, runner_args: list[str] | None = None, cp_env: dict[str, str] | None = None
) -> TunnelEnv:
    cp = ControlPlaneProcess(
        tmp / "cp", f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}", extra_env=cp_env
    ).start()
    proxy = ChaosProxy(cp.port).start()
    admin_key = cp.cli("keys", "create", "admin", "--admin").splitlines()[-1]
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        "faulty",
        url=proxy.url,
        args=["--parallel", "2", "--ctx", "2048", *(runner_args or [])],
    )
    runner.start()
    runner_id = runner.wait_connected(admin_key)
    return TunnelEnv(cp, proxy, runner, admin_key, runner_id, tmp)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[TunnelEnv]:
    e = make_env(tmp_path)
    try:
        yield e
    finally:
        e.runner.stop(timeout=10)
        e.proxy.close()
        e.cp.stop()
