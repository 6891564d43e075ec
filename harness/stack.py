"""Start the processes a benchmark measures: an engine, a control plane, a runner attached to the
engine.

Both benchmark paths hit the *same* engine process: ``direct`` is the
engine's own port, ``through`` is client → control plane → tunnel → runner
(``--attach``) → that engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.processes import ControlPlaneProcess, RunnerProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Engine", "Stack", "start_control_plane", "start_engine", "start_runner", "start_stack"]


@dataclass
class Engine:
    kind: str  # "llama" or "sim"
    port: int
    proc: subprocess.Popen[bytes]
    describe: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_engine(kind: str, *, parallel: int = 16, threads: int = 2, log_dir: Path) -> Engine:
    port = free_port()
    log = open(log_dir / f"engine-{kind}.log", "ab")  # noqa: SIM115 - lives as long as the process
    if kind == "llama":
        from outpost.runner.models import embedded_model_path

        ctx = 512 * parallel
        argv = [
            sys.executable,
            "-m",
            "outpost.runner.engines.xllamacpp_main",
            "--model",
            str(embedded_model_path()),
            "--port",
            str(port),
            "--parallel",
            str(parallel),
            "--ctx",
            str(ctx),
            "--threads",
            str(threads),
        ]
        describe = (
            f"llama.cpp (xllamacpp, `runner.engines.xllamacpp_main`) with the embedded "
            f"SmolLM2-135M-Instruct Q4_1, {parallel} slots × {ctx // parallel} context, {threads} "
            "threads"
        )
        health = "/health"
    else:
        argv = [sys.executable, str(ROOT / "bench" / "sim_engine.py"), "--port", str(port)]
        describe = (
            "SIMULATED engine (`bench/sim_engine.py`, raw asyncio SSE server; rate set per request)"
        )
        health = "/health"
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    engine = Engine(kind, port, proc, describe)
    try:
        wait_until(
            lambda: _alive(proc) and httpx.get(engine.url + health, timeout=2).status_code == 200,
            120,
            f"{kind} engine on {engine.url}",
        )
    except BaseException:
        engine.stop()
        raise
    return engine


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"engine exited with {proc.returncode}")
    return True


@dataclass
class Stack:
    tmp: Path
    cp: ControlPlaneProcess
    key: str
    runners: list[RunnerProcess] = field(default_factory=list)
    model: str = ""

    @property
    def port(self) -> int:
        return self.cp.port

    def stop(self) -> None:
        for r in self.runners:
            r.stop()
        self.cp.stop()


def start_control_plane(tmp: Path, env: dict[str, str] | None = None) -> ControlPlaneProcess:
    """A control plane on a fresh SQLite database under ``tmp``, logging warnings only (a
    benchmark's ``env`` may say otherwise), started and healthy."""
    return ControlPlaneProcess(
        tmp / "cp",
        f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}",
        extra_env={"OUTPOST_LOG_LEVEL": "warning", **(env or {})},
    ).start()


def start_runner(
    cp: ControlPlaneProcess,
    tmp: Path,
    name: str,
    key: str,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> RunnerProcess:
    """A runner enrolled as ``name`` (state under ``tmp``), connected: ``key`` sees its models.
    Without ``--attach`` in ``args`` it starts the embedded model itself."""
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        name,
        args=args,
        extra_env={"OUTPOST_LOG_LEVEL": "warning", **(env or {})},
    )
    try:
        runner.start()
        runner.wait_connected(key)
    except BaseException:
        runner.stop()
        raise
    return runner


def start_stack(
    engine: Engine | None,
    *,
    capacity: int = 64,
    connections: int = 2,
    env: dict[str, str] | None = None,
    tmp: Path | None = None,
) -> Stack:
    """A control plane on SQLite (fresh state) and, with ``engine``, one runner attached to it."""
    tmp = tmp or Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    cp = start_control_plane(tmp, env)
    stack = Stack(tmp, cp, "")
    try:
        stack.key = cp.api_key("default", "bench")
        if engine is not None:
            attach = ["--attach", engine.url, "--parallel", str(capacity)]
            runner = start_runner(
                cp, tmp, "bench-runner", stack.key, [*attach, "--connections", str(connections)]
            )
            stack.runners.append(runner)
            stack.model = cp.models(stack.key)[0]
    except BaseException:
        stack.stop()
        raise
    return stack


def pids(stack: Stack, engine: Engine | None) -> dict[str, int]:
    out = {"control plane": stack.cp.proc.pid, "client": os.getpid()}  # type: ignore[union-attr]
    for i, r in enumerate(stack.runners):
        out["runner" if i == 0 else f"runner {i}"] = r.proc.pid  # type: ignore[union-attr]
    if engine is not None:
        out["engine"] = engine.proc.pid
    return out
