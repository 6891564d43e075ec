"""Engine process lifecycle: start, wait healthy, watch, restart, stop.

Watching means two things: the process must not exit, and it must keep
answering its health check. An engine can hang and stay alive (a deadlock, a
wedged GPU, a stopped process); only the health check sees that. After
``HealthCheck.failures`` failed checks in a row the engine is marked down at
once (its models leave the runner's status) and killed, and the usual restart
with backoff follows.

The process spawner, the HTTP client and the health probe are injected, so
tests can drive the supervisor with a real engine or an honest fake.
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
from dataclasses import dataclass
from pathlib import Path

import httpx

from outpost.runner.engine_process import EngineRegistry, spawn_engine
from outpost.runner.engines.base import EngineAdapter

__all__ = ["EngineFailed", "HealthCheck", "HealthProbe", "Supervisor", "free_port", "http_probe"]

log = logging.getLogger("outpost.runner.supervisor")


class EngineFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Progress = Callable[[str], None]

#: One health check: ``probe(url, timeout_s)`` → ``None`` when the engine answered
#: healthy, else why not ("HTTP 503", "ReadTimeout", ...).
HealthProbe = Callable[[str, float], Awaitable[str | None]]


@dataclass(frozen=True)
class HealthCheck:
    """How a running engine is checked (runner settings ``health_check_*``)."""

    interval_s: float = 5.0
    timeout_s: float = 5.0
    #: Failed checks in a row that mark the engine down and restart it; one slow
    #: answer under load is not a hang.
    failures: int = 3


def http_probe(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> HealthProbe:
    """The default probe: GET the URL, healthy on HTTP 200."""

    async def probe(url: str, timeout_s: float) -> str | None:
        try:
            resp = await http.get(url, timeout=timeout_s, headers=headers)
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if resp.status_code == 200 else f"HTTP {resp.status_code}"

    return probe


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
        health_check: HealthCheck | None = None,
        probe: HealthProbe | None = None,
        spawn: Callable[..., Awaitable[asyncio.subprocess.Process]] = spawn_engine,
        registry: EngineRegistry | None = None,
    ) -> None:
        self.adapter = adapter
        self.http = http
        self.health_timeout_s = health_timeout_s
        self.max_backoff_s = max_backoff_s
        self.health_check = health_check or HealthCheck()
        # An attached engine may want its API key on the probe too.
        headers = adapter.headers() if hasattr(adapter, "headers") else None
        self._probe = probe or http_probe(http, headers)
        self._spawn = spawn
        # Where started engines are recorded, so the next run can stop one this run left behind.
        self._registry = registry
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
            self._forget()  # the previous process (a restart) is dead by now
            self.proc = await self._spawn(
                *spec.argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            if self._registry is not None:
                self._registry.record(self.proc.pid, spec.argv)
            self._pump = asyncio.create_task(self._pump_logs(self.proc))
        await self._wait_healthy(progress)

    async def _wait_healthy(self, progress: Progress | None) -> None:
        self.healthy.clear()
        deadline = time.monotonic() + self.health_timeout_s
        url = self.base_url + self.adapter.health_path
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.returncode is not None:
                raise EngineFailed(
                    f"engine exited with code {self.proc.returncode} while loading; "
                    f"see {self._log_path}"
                )
            status = await self._probe(url, min(self.health_check.timeout_s, 2.0))
            if status is None:
                self.healthy.set()
                return
            if progress:
                progress(f"waiting for {self.adapter.name} ({status})")
            await asyncio.sleep(0.25)
        raise EngineFailed(
            f"engine not healthy after {self.health_timeout_s:.0f}s; see {self._log_path}"
        )

    async def watch(self) -> None:
        """Restart the engine with bounded exponential backoff whenever it dies or hangs."""
        if self.proc is None:
            await self._watch_attached()
            return
        backoff = 1.0
        while not self._stopping:
            why = await self._until_down()
            # stop() sets it while we wait; mypy keeps the loop condition's narrowing (False).
            if self._stopping:
                return  # type: ignore[unreachable]
            self.healthy.clear()
            self.restarts += 1
            log.warning(
                "engine %s %s; restart %d in %.1fs", self._label, why, self.restarts, backoff
            )
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            started = time.monotonic()
            try:
                await self.start()
                log.warning(
                    "engine %s is back (restart %d, port %s)", self._label, self.restarts, self.port
                )
            except (EngineFailed, OSError) as exc:
                log.error("engine %s restart failed: %s", self._label, exc)
                self._kill()  # hung while loading: the next loop turn retries it
            # Only a restart that stayed up a while resets the backoff.
            backoff = (
                1.0 if time.monotonic() - started > 60 else min(backoff * 2, self.max_backoff_s)
            )

    async def _until_down(self) -> str:
        """Wait until the engine exits, or hangs (killing it then); say which."""
        proc = self.proc
        assert proc is not None
        exited = asyncio.ensure_future(proc.wait())
        check = self.health_check
        url = self.base_url + self.adapter.liveness_path
        failures = 0
        try:
            while True:
                await asyncio.wait([exited], timeout=check.interval_s)
                if exited.done() or self._stopping:
                    return f"exited with code {proc.returncode}"
                status = await self._probe(url, check.timeout_s)
                if exited.done():
                    return f"exited with code {proc.returncode}"
                if status is None:
                    failures = 0
                    continue
                failures += 1
                log.info(
                    "engine %s health check failed (%s), %d of %d",
                    self._label,
                    status,
                    failures,
                    check.failures,
                )
                if failures >= check.failures:
                    # Down from this moment: the runner's status stops offering its models.
                    self.healthy.clear()
                    log.warning(
                        "engine %s is alive but failed %d health checks in a row (%s %s); "
                        "marked unavailable, killing it",
                        self._label,
                        failures,
                        self.adapter.liveness_path,
                        status,
                    )
                    self._kill()  # SIGKILL also ends a stopped (SIGSTOP) process
                    await exited
                    return f"hung (failed {failures} health checks), killed"
        finally:
            exited.cancel()

    async def _watch_attached(self) -> None:
        """An attached engine is not ours to restart: its models come and go with its health."""
        check = self.health_check
        url = self.base_url + self.adapter.liveness_path
        failures = 0
        while not self._stopping:
            await asyncio.sleep(check.interval_s)
            status = await self._probe(url, check.timeout_s)
            if status is None:
                if not self.healthy.is_set():
                    log.warning("attached engine at %s answers again", self.base_url)
                failures = 0
                self.healthy.set()
                continue
            failures += 1
            if failures == check.failures:
                self.healthy.clear()
                log.warning(
                    "attached engine at %s failed %d health checks in a row (%s); marked "
                    "unavailable",
                    self.base_url,
                    failures,
                    status,
                )

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
        self._forget()
        if self._pump is not None:
            await asyncio.wait([self._pump], timeout=2)

    def _forget(self) -> None:
        if (
            self._registry is not None
            and self.proc is not None
            and self.proc.returncode is not None
        ):
            self._registry.forget(self.proc.pid)

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
        handler = logging.handlers.RotatingFileHandler(
            log_dir / name, maxBytes=10 * 2**20, backupCount=3
        )
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger
