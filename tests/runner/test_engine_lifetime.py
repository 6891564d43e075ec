"""Engines die with their runner, and the runner with `control-plane up`: real processes throughout.

A real control plane, real runners and real llama.cpp engines (the embedded
SmolLM2). "Gone" means no longer running: a killed process whose new parent
(init, in a container maybe not one that reaps) has not collected it yet is a
zombie, which holds no memory and serves nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import psutil
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, free_port, wait_until
from outpost.runner.engine_process import EngineRecord, EngineRegistry
from outpost.runner.models import embedded_model_path

LIGHT = ["--parallel", "1", "--headroom", "0", "--ctx", "512"]
ENGINE_MODULE = "outpost.runner.engines.xllamacpp_main"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _engines_under(pid: int) -> list[psutil.Process]:
    """The llama.cpp engine processes below ``pid`` that still run."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if ENGINE_MODULE in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def _engine_argv(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        ENGINE_MODULE,
        "--model",
        str(embedded_model_path()),
        "--port",
        str(port),
        "--ctx",
        "512",
        "--parallel",
        "1",
        "--threads",
        "1",
    ]


def _wait_healthy(port: int) -> None:
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200,
        120,
        f"engine on port {port}",
    )


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    tmp = tmp_path_factory.mktemp("engine-lifetime")
    proc = ControlPlaneProcess(tmp / "cp", f"sqlite+aiosqlite:///{tmp / 'outpost.db'}").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def key(cp: ControlPlaneProcess) -> str:
    return cp.api_key()


def test_the_engine_dies_when_its_runner_is_killed_with_sigkill(
    cp: ControlPlaneProcess, key: str, tmp_path: Path
) -> None:
    runner = RunnerProcess(cp, tmp_path / "runner", "killed", args=LIGHT).start()
    try:
        runner.wait_connected(key)
        engines = _engines_under(runner.proc.pid)  # type: ignore[union-attr]
        assert len(engines) == 1
        engine = engines[0].pid
        resp = httpx.post(
            f"{cp.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            json={
                "model": "smollm2",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        assert resp.status_code == 200, resp.text  # it serves
        runner.proc.kill()  # type: ignore[union-attr]
        runner.proc.wait()  # type: ignore[union-attr]
        wait_until(lambda: not _running(engine), 15, f"engine {engine} to die with its runner")
    finally:
        runner.stop()


def test_a_restarted_runner_stops_the_engine_its_previous_run_left_behind(
    cp: ControlPlaneProcess, key: str, tmp_path: Path
) -> None:
    state = tmp_path / "runner"
    registry = EngineRegistry(state / "engines")
    # The previous run: a process that started an engine, recorded it as the runner does,
    # and died without stopping it (no parent-death signal: a platform without one, or an
    # engine that outlived it some other way). The engine is reparented and keeps serving.
    port = free_port()
    previous_run = (
        "import subprocess, sys\n"
        "from pathlib import Path\n"
        "from runner.engine_process import EngineRegistry\n"
        "argv = sys.argv[2:]\n"
        "p = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\n"
        "EngineRegistry(Path(sys.argv[1])).record(p.pid, argv)\n"
        "print(p.pid)\n"
    )
    previous = subprocess.run(
        [sys.executable, "-c", previous_run, str(registry.directory), *_engine_argv(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    stale = int(previous.stdout.strip())
    # An unrelated process whose pid the record names, but that started at another time: a reused
    # pid.
    unrelated = subprocess.Popen(["sleep", "300"])
    try:
        _wait_healthy(port)
        assert _running(stale)
        reused = EngineRecord(
            pid=unrelated.pid,
            started=psutil.Process(unrelated.pid).create_time() - 50,
            runner_pid=previous_runner_pid(registry, stale),
            runner_started=0.0,
            argv=["python", "-m", ENGINE_MODULE],
        )
        (registry.directory / f"{unrelated.pid}.json").write_text(json.dumps(asdict(reused)))

        runner = RunnerProcess(cp, state, "restarted", args=LIGHT).start()
        try:
            runner.wait_connected(key)
            assert not _running(stale), "the stale engine still runs"
            assert unrelated.poll() is None, "a process with a reused pid was killed"
            engines = _engines_under(runner.proc.pid)  # type: ignore[union-attr]
            assert len(engines) == 1
            assert {r.pid for r in registry.records()} == {engines[0].pid}
            assert "left behind by a previous run" in runner.log()
        finally:
            runner.stop()
        assert registry.records() == []  # a clean stop leaves nothing to find
        assert not _running(engines[0].pid)
    finally:
        unrelated.kill()
        unrelated.wait()
        if _running(stale):
            os.killpg(stale, signal.SIGKILL)


def previous_runner_pid(registry: EngineRegistry, engine: int) -> int:
    [rec] = [r for r in registry.records() if r.pid == engine]
    return rec.runner_pid


def test_an_attached_engine_outlives_its_runner_and_is_never_stopped(
    cp: ControlPlaneProcess, key: str, tmp_path: Path
) -> None:
    port = free_port()
    engine = subprocess.Popen(
        _engine_argv(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_healthy(port)
        state = tmp_path / "runner"
        args = ["--attach", f"http://127.0.0.1:{port}"]
        runner = RunnerProcess(cp, state, "attached", args=args).start()
        runner.wait_connected(key)
        runner.proc.kill()  # type: ignore[union-attr]
        runner.proc.wait()  # type: ignore[union-attr]
        again = RunnerProcess(cp, state, "attached", args=args).start()
        try:
            again.wait_connected(key)
        finally:
            again.stop()
        assert engine.poll() is None, "the runner stopped an engine it did not start"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        engine.kill()
        engine.wait()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"]
)
def test_control_plane_up_takes_its_runner_and_engine_with_it(sig: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTPOST_")}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "outpost.control_plane.cli",
                "up",
                "--port",
                str(free_port()),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "serving" in log_path.read_text(errors="replace"),
            180,
            f"control-plane up to serve\n{log_path.read_text(errors='replace')}",
        )
        tree = psutil.Process(up.pid).children(recursive=True)
        assert len(_engines_under(up.pid)) == 1 and len(tree) >= 2  # the runner and its engine
        up.send_signal(sig)
        up.wait(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_running(p.pid) for p in tree):
            time.sleep(0.2)
        left = [
            (p.pid, p.info)
            for p in psutil.process_iter(["cmdline"])
            if p.pid in {c.pid for c in tree} and _running(p.pid)
        ]
        assert left == [], f"left running after {signal.Signals(sig).name}: {left}"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
