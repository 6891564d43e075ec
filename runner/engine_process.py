"""Engine processes that cannot outlive their runner, and the record that finds those that did.

Two guarantees, one for each way a runner can die:

- While the runner lives, every engine it starts carries a parent-death signal
  (Linux ``prctl(PR_SET_PDEATHSIG)``, set in the child between fork and exec):
  the kernel sends it ``SIGKILL`` the moment the runner ends, ``kill -9`` and
  OOM kills included. The signal fires when the *thread* that forked exits, so
  engines are forked from the runner's event-loop thread, which lives as long
  as the runner does.
- The kernel signal reaches the engine process only, not processes the engine
  started itself (vLLM's workers). So each engine is also recorded in the
  runner's state directory (pid + process start time + the runner's own pid and
  start time), and a runner that starts stops the process group of every
  recorded engine whose runner is gone. A record whose pid now belongs to
  another process (a different start time) is dropped and the process left
  alone. Attached engines are never spawned, so never recorded nor stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from outpost.sdk.process import parent_death_signal

__all__ = ["EngineRecord", "EngineRegistry", "parent_death_signal", "spawn_engine"]

log = logging.getLogger("outpost.runner.engines")


async def spawn_engine(*argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` for an engine: killed by the kernel when the runner
    dies."""
    return await asyncio.create_subprocess_exec(
        *argv, preexec_fn=parent_death_signal(signal.SIGKILL), **kwargs
    )


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _same_start(a: float | None, b: float) -> bool:
    # psutil derives both from the same boot time and clock ticks: one process reads the same twice.
    return a is not None and abs(a - b) < 1e-3


@dataclass(frozen=True)
class EngineRecord:
    pid: int
    started: float  # psutil create_time of the engine process
    runner_pid: int
    runner_started: float
    argv: list[str]


class EngineRegistry:
    """The engines this runner started, one JSON file each under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, pid: int, argv: list[str]) -> None:
        started = _start_time(pid)
        me = os.getpid()
        if started is None:
            return  # already gone: nothing to find later
        rec = EngineRecord(
            pid=pid,
            started=started,
            runner_pid=me,
            runner_started=_start_time(me) or 0.0,
            argv=[str(a) for a in argv][:16],
        )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(pid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        os.replace(tmp, path)

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(pid).unlink()

    def records(self) -> list[EngineRecord]:
        out: list[EngineRecord] = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                out.append(EngineRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                log.warning("unreadable engine record %s; removed", path)
                path.unlink(missing_ok=True)
        return out

    def stop_stale(self, grace_s: float = 10.0) -> int:
        """Stop the engines of a previous run of this runner; return how many processes were
        signalled.

        Only a record whose runner is no longer running counts (a second runner
        sharing the state directory keeps its engines), and only a process whose
        pid *and* start time match the record is touched.
        """
        stopped = 0
        for rec in self.records():
            if _same_start(_start_time(rec.runner_pid), rec.runner_started):
                log.warning(
                    "engine %d belongs to runner %d, which still runs on this state dir; "
                    "left alone",
                    rec.pid,
                    rec.runner_pid,
                )
                continue
            victims = _group_of(rec)
            if victims:
                log.warning(
                    "stopping engine process %d left behind by a previous run (%s)",
                    rec.pid,
                    " ".join(rec.argv[:4]),
                )
                stopped += len(victims)
                _terminate(victims, grace_s)
            self.forget(rec.pid)
        return stopped

    def _path(self, pid: int) -> Path:
        return self.directory / f"{pid}.json"


def _group_of(rec: EngineRecord) -> list[psutil.Process]:
    """The recorded engine and what it started (its process group), if the record still names
    them."""
    try:
        leader: psutil.Process | None = psutil.Process(rec.pid)
    except psutil.NoSuchProcess:
        leader = None
    if leader is not None and not _same_start(_start_time(rec.pid), rec.started):
        log.info("engine record %d: that pid now belongs to another process; left alone", rec.pid)
        return []
    # The engine leads its own process group (it is started in a new session). Linux keeps
    # a pid from being reused while a group still carries it, so with the leader gone every
    # process in group ``pid`` is still one the engine started.
    group: list[psutil.Process] = [leader] if leader is not None else []
    for proc in psutil.process_iter():
        if proc.pid == rec.pid:
            continue
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == rec.pid and proc.create_time() >= rec.started - 1e-3:
                group.append(proc)
    return group


def _terminate(procs: list[psutil.Process], grace_s: float) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()  # psutil refuses to signal a process whose pid was reused since
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        psutil.wait_procs(alive, timeout=5)
