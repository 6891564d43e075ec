"""The supervisor's health re-check of a running engine, with an injected probe.

The engine is a real process that does nothing (``sleep``): it stays alive, so
only the probe can tell the supervisor it hangs. The real-engine version
(SIGSTOP of llama.cpp) is in test_multi_model_e2e.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from outpost.runner.engines.attach import AttachedEngine
from outpost.runner.engines.base import EngineLoad, LaunchSpec, ServedModel
from outpost.runner.fleet import EngineFleet
from outpost.runner.supervisor import HealthCheck, Supervisor

FAST = HealthCheck(interval_s=0.05, timeout_s=0.1, failures=3)


@dataclass
class SleepingEngine:
    """An engine process that lives until killed and serves nothing."""

    models: tuple[ServedModel, ...] = (ServedModel(name="smol", engine="test"),)
    capacity: int = 1
    name: str = "sleeper"
    health_path: str = "/ready"
    liveness_path: str = "/live"

    def launch_spec(self, port: int) -> LaunchSpec:
        return LaunchSpec(argv=[sys.executable, "-c", "import time; time.sleep(600)"])

    def base_url(self, port: int | None) -> str:
        return f"http://127.0.0.1:{port}"

    def parse_metrics(self, text: str) -> EngineLoad:
        return EngineLoad()


class ScriptedProbe:
    """Answers healthy unless ``hung``; records every URL it was asked about."""

    def __init__(self) -> None:
        self.hung = False
        self.calls: list[str] = []

    async def __call__(self, url: str, timeout_s: float) -> str | None:
        self.calls.append(url)
        return "ReadTimeout" if self.hung else None


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_hung_engine_is_marked_unavailable_at_once_killed_and_restarted(
    tmp_path: Path,
) -> None:
    probe = ScriptedProbe()
    async with httpx.AsyncClient() as http:
        fleet = EngineFleet(
            [SleepingEngine()], log_dir=tmp_path, http=http, health_check=FAST, probe=probe
        )
        sup = fleet.engines[0].supervisor
        await fleet.start()
        watcher = asyncio.create_task(fleet.watch())
        try:
            first = sup.proc
            assert first is not None and fleet.unavailable_models() == []
            await asyncio.sleep(0.3)  # several passing checks: nothing happens
            assert sup.restarts == 0 and first.returncode is None
            assert any(u.endswith("/live") for u in probe.calls), (
                "running engines are checked on liveness_path"
            )

            probe.hung = True
            await _until(lambda: not sup.healthy.is_set())
            # Unavailable before the process is even gone, and then killed (not left hanging).
            assert fleet.unavailable_models() == ["smol"] and not fleet.healthy
            await _until(lambda: first.returncode is not None)
            assert first.returncode == -9

            probe.hung = False  # the restarted engine answers
            await _until(lambda: sup.healthy.is_set())
            assert sup.restarts == 1 and sup.proc is not first and sup.proc.returncode is None
            assert fleet.unavailable_models() == []
        finally:
            watcher.cancel()
            await fleet.stop()


async def test_failures_must_be_consecutive(tmp_path: Path) -> None:
    answers = iter([None, "HTTP 503", "HTTP 503", None] * 20)

    async def flaky(url: str, timeout_s: float) -> str | None:
        return next(answers, None)

    async with httpx.AsyncClient() as http:
        sup = Supervisor(
            SleepingEngine(), log_dir=tmp_path, http=http, health_check=FAST, probe=flaky
        )
        await sup.start()
        watcher = asyncio.create_task(sup.watch())
        try:
            await asyncio.sleep(1.0)  # ~20 checks, never 3 failures in a row
            assert sup.healthy.is_set() and sup.restarts == 0 and sup.proc.returncode is None
        finally:
            watcher.cancel()
            await sup.stop()


async def test_default_probe_times_out_on_an_engine_that_accepts_but_never_answers(
    tmp_path: Path,
) -> None:
    # What SIGSTOP looks like from outside: the kernel accepts the connection, nobody answers.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as http, server:
        sup = Supervisor(
            AttachedEngine(url=f"http://127.0.0.1:{port}/v1"),
            log_dir=tmp_path,
            http=http,
            health_check=FAST,
        )
        sup.healthy.set()  # as after start()
        watcher = asyncio.create_task(sup.watch())
        try:
            # An attached engine is not restarted, only marked unavailable.
            await _until(lambda: not sup.healthy.is_set(), timeout=5)
            assert sup.restarts == 0
        finally:
            watcher.cancel()
            await sup.stop()


async def test_an_attached_engine_is_checked_with_its_api_key(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        ok = request.headers.get("authorization") == "Bearer k-1"
        return httpx.Response(200 if ok else 401, json={"data": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        sup = Supervisor(
            AttachedEngine(url="http://engine.example/v1", api_key="k-1"),
            log_dir=tmp_path,
            http=http,
            health_check=FAST,
        )
        await (
            sup.start()
        )  # without the key on the probe an attached engine behind a key never got ready
        assert sup.healthy.is_set() and seen == ["Bearer k-1"]
        await sup.stop()
