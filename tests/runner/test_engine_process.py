"""The engine record's start-up sweep, with real processes (``sleep`` stands in for an engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import psutil

from harness.processes import wait_until
from outpost.runner.engine_process import EngineRecord, EngineRegistry


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _dead_runner() -> tuple[int, float]:
    """The pid and start time of a process that has exited: a runner that was killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def _sweep(registry: EngineRegistry, grace_s: float = 10.0) -> int:
    return registry.stop_stale(grace_s=grace_s)


def _write(registry: EngineRegistry, rec: EngineRecord) -> None:
    registry.directory.mkdir(parents=True, exist_ok=True)
    (registry.directory / f"{rec.pid}.json").write_text(json.dumps(asdict(rec)))


def test_what_an_engine_started_is_stopped_with_it_even_after_the_engine_itself_died(
    tmp_path: Path,
) -> None:
    # An engine that started a worker of its own (as vLLM does) in its process group; the kernel's
    # parent-death signal reaches the engine only, so the worker is left once the engine is gone.
    engine = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert engine.stdout is not None
    worker = int(engine.stdout.readline())
    registry = EngineRegistry(tmp_path / "engines")
    runner_pid, runner_started = _dead_runner()
    _write(
        registry,
        EngineRecord(
            pid=engine.pid,
            started=psutil.Process(engine.pid).create_time(),
            runner_pid=runner_pid,
            runner_started=runner_started,
            argv=["sh"],
        ),
    )
    try:
        engine.kill()
        engine.wait()
        assert _running(worker)
        assert _sweep(registry, 5) == 1
        wait_until(lambda: not _running(worker), 10, "the engine's worker to stop")
        assert registry.records() == []
    finally:
        if _running(worker):
            os.kill(worker, 9)


def test_an_engine_whose_runner_still_runs_is_left_alone(tmp_path: Path) -> None:
    # Two runners pointed at one state directory by mistake: the second must not kill the first's
    # engine.
    engine = subprocess.Popen(["sleep", "300"], start_new_session=True)
    registry = EngineRegistry(tmp_path / "engines")
    try:
        registry.record(engine.pid, ["sleep", "300"])  # recorded by this (live) process
        assert _sweep(registry, 5) == 0
        assert engine.poll() is None
        assert [r.pid for r in registry.records()] == [engine.pid]
    finally:
        engine.kill()
        engine.wait()


def test_a_reused_pid_is_never_touched_and_its_record_is_dropped(tmp_path: Path) -> None:
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    registry = EngineRegistry(tmp_path / "engines")
    runner_pid, runner_started = _dead_runner()
    try:
        started = psutil.Process(unrelated.pid).create_time()
        _write(
            registry,
            EngineRecord(
                pid=unrelated.pid,
                started=started - 3600,
                runner_pid=runner_pid,
                runner_started=runner_started,
                argv=["engine"],
            ),
        )
        assert _sweep(registry, 5) == 0
        assert unrelated.poll() is None
        assert registry.records() == []
    finally:
        unrelated.kill()
        unrelated.wait()


def test_an_unreadable_record_is_dropped(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path / "engines")
    registry.directory.mkdir(parents=True)
    (registry.directory / "123.json").write_text("{not json")
    assert _sweep(registry) == 0
    assert list(registry.directory.iterdir()) == []
