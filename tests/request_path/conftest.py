"""A real control plane (uvicorn in a thread of this process) in front of a runner and a simulated
engine.

In-process for two reasons: the tests count the SQL statements the request
path sends (a SQLAlchemy event listener on the app's own engine), and they
call the record writer's ``flush()`` on the app's own event loop. Everything
else is what production runs: uvicorn, the tunnel, a ``runner`` process
(``--attach``) and an OpenAI-compatible engine — the benchmark's simulator
(``bench/sim_engine.py``), which answers at once so that the tests measure
the control plane, not a model on two shared cores.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import event

from harness.processes import (
    ControlPlaneProcess,
    RunnerProcess,
    free_port,
    run_db,
    share_default_pool,
    wait_until,
)
from harness.stack import Engine, start_engine
from outpost.control_plane.admin import issue_api_key, issue_enrollment_token
from outpost.control_plane.app import create_app
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.settings import Settings
from outpost.control_plane.state import AppState
from outpost.sdk.protocol import MAX_FRAME_BYTES
from tests.conftest import _database

T = TypeVar("T")
MODEL = "sim-engine"


class InThreadControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            loop="asyncio",
            ws_max_size=MAX_FRAME_BYTES + 1024,
            ws_per_message_deflate=False,
            ws_max_queue=64,
            ws_ping_interval=settings.tunnel_ping_interval_s,
            ws_ping_timeout=settings.tunnel_ping_timeout_s,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self._serve()), name="control-plane", daemon=True
        )

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def start(self) -> InThreadControlPlane:
        self.thread.start()
        wait_until(
            lambda: httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200,
            60,
            "control plane",
        )
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def state(self) -> AppState:
        return self.app.state.outpost

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
        """Run ``fn()`` on the control plane's event loop and wait for its result."""
        assert self.loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(fn(), self.loop)
        return future.result(timeout)

    def flush(self, timeout: float = 60) -> None:
        """Every request record submitted so far is committed."""
        self.call(lambda: self.state.records.flush(timeout), timeout + 5)


class StatementCounter:
    """SQL statements the app's engine sends, by a substring of their text."""

    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        self._engine = db.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements.append(statement)

    def count(self, needle: str) -> int:
        return sum(needle in s for s in self.statements)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


class PathStack:
    def __init__(
        self,
        backend: str,
        cp: InThreadControlPlane,
        runner: RunnerProcess,
        engine: Engine,
        database_url: str,
        tmp: Path,
    ) -> None:
        self.backend, self.cp, self.runner, self.engine = backend, cp, runner, engine
        self.database_url, self.tmp = database_url, tmp

    def key(self, name: str, tenant: str = "paths", admin: bool = False) -> tuple[str, str]:
        """A new API key ``(key_id, secret)``, made as the CLI makes it (its own connection)."""
        return run_db(self.database_url, lambda db: issue_api_key(db, tenant, name, admin))

    def headers(self, secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def path_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PathStack]:
    tmp: Path = tmp_path_factory.mktemp(f"paths-{request.param}")
    db = _database(request.param, tmp)
    url = next(db)
    upgrade_to_head(url)
    # A long key-cache TTL: a test that sees a change at once sees it because of invalidation, not
    # expiry.
    settings = Settings(
        state_dir=tmp / "cp",
        database_url=url,
        port=free_port(),
        auth_cache_ttl_s=300,
        log_level="warning",
    )
    engine = start_engine("sim", log_dir=tmp)
    cp = InThreadControlPlane(settings).start()
    shim = ControlPlaneProcess(tmp / "cp", url, port=settings.port)
    runner = RunnerProcess(
        shim, tmp / "runner", "paths-runner", args=["--attach", engine.url, "--parallel", "64"]
    )
    try:
        token = run_db(url, lambda d: issue_enrollment_token(d, "paths", "paths-runner", 600))
        _, admin = run_db(url, lambda d: issue_api_key(d, "paths", "admin", True))
        run_db(
            url, lambda d: share_default_pool(d, "paths")
        )  # its runner serves every tenant's keys
        runner.start(token)
        runner.wait_connected(admin)
        yield PathStack(request.param, cp, runner, engine, url, tmp)
    finally:
        runner.stop()
        cp.stop()
        engine.stop()
        db.close()
