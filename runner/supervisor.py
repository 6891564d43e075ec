"""Engine process lifecycle: start, wait healthy, watch, restart, stop.

The process spawner and the HTTP client are injected, so tests can drive the
supervisor with a real engine or an honest fake process.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from runner.engines.base import EngineAdapter

__all__ = ["EngineFailed", "Supervisor", "free_port"]

log = logging.getLogger("outpost.runner.supervisor")


class EngineFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Progress = Callable[[str], None]


class Supervisor:
    def __init__(
        self,
        adapter: EngineAdapter,
        *,
        log_dir: Path,
        http: httpx.AsyncClient,
        log_name: str = "engine.log",
        health_timeout_s: float = 300.0,
        max_backoff_s: float = 30.0,
        spawn: Callable[..., Awaitable[asyncio.subprocess.Process]] = asyncio.create_subprocess_exec,
    ) -> None:
        self.adapter = adapter
        self.http = http
        self.health_timeout_s = health_timeout_s
        self.max_backoff_s = max_backoff_s
        self._spawn = spawn
        self.port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.healthy = asyncio.Event()
        self._stopping = False
        self._log = _engine_logger(log_dir, log_name)
        self._pump: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return self.adapter.base_url(self.port)

    async def start(self, progress: Progress | None = None) -> None:
        """Start the engine (if managed) and wait until it answers its health check."""
        port = free_port()
        spec = self.adapter.launch_spec(port)
        if spec is not None:  # None: an attached engine we do not manage
            self.port = port
            env = {**os.environ, **spec.env}
            self.proc = await self._spawn(*spec.argv, stdout=asyncio.subprocess.PIPE,
                                          stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
            self._pump = asyncio.create_task(self._pump_logs(self.proc))
        await self._wait_healthy(progress)

    async def _wait_healthy(self, progress: Progress | None) -> None:
        self.healthy.clear()
        deadline = time.monotonic() + self.health_timeout_s
        url = self.base_url + self.adapter.health_path
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise EngineFailed(f"engine exited with code {self.proc.returncode} while loading; "
                                   f"see {self._log_path}")
            try:
                resp = await self.http.get(url, timeout=2.0)
                if resp.status_code == 200:
                    self.healthy.set()
                    return
                status = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            if progress:
                progress(f"waiting for {self.adapter.name} ({status})")
            await asyncio.sleep(0.25)
        raise EngineFailed(f"engine not healthy after {self.health_timeout_s:.0f}s; see {self._log_path}")

    async def watch(self) -> None:
        """Restart the engine with bounded exponential backoff whenever it dies."""
        if self.proc is None:
            return
        backoff = 1.0
        while not self._stopping:
            code = await self.proc.wait()
            if self._stopping:
                return
            self.healthy.clear()
            self.restarts += 1
            log.warning("engine %s exited with code %s; restart %d in %.1fs", self._label, code, self.restarts,
                        backoff)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            started = time.monotonic()
            try:
                await self.start()
            except (EngineFailed, OSError) as exc:
                log.error("engine %s restart failed: %s", self._label, exc)
                self._kill()  # hung while loading: the next loop turn retries it
            # Only a restart that stayed up a while resets the backoff.
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, self.max_backoff_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._pump is not None:
            await asyncio.wait([self._pump], timeout=2)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _pump_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self._log.info(line.decode(errors="replace").rstrip())

    @property
    def _label(self) -> str:
        models = self.adapter.models
        return f"{self.adapter.name} ({models[0].name})" if models else self.adapter.name

    @property
    def _log_path(self) -> str:
        handler = self._log.handlers[0]
        return getattr(handler, "baseFilename", "the engine log")


def _engine_logger(log_dir: Path, name: str) -> logging.Logger:
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"outpost.engine.{log_dir / name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.handlers.RotatingFileHandler(log_dir / name, maxBytes=10 * 2**20,
                                                       backupCount=3)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger
