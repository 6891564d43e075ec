"""A real control plane (uvicorn, in a thread of this process) with a wall clock the
tests can move, and a real runner with one slot, on SQLite and PostgreSQL.

The control plane runs in-process for one reason: budget periods follow the
wall clock, and ``create_app(wall_clock=...)`` is the seam that lets a test
cross a period boundary without waiting for midnight. Everything else is
what production runs: uvicorn, the tunnel, the runner process, llama.cpp.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from harness.processes import (
    ControlPlaneProcess,
    RunnerProcess,
    free_port,
    run_db,
    share_default_pool,
    wait_until,
)
from outpost.control_plane.admin import issue_api_key, issue_enrollment_token
from outpost.control_plane.app import create_app
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.settings import Settings
from outpost.sdk.protocol import MAX_FRAME_BYTES
from tests.conftest import _database

MODEL = "smollm2-135m-instruct"
USD_PER_HOUR = 3.6  # $0.001 per second of engine time: easy to check by hand
QUEUE_PER_TENANT = 3


class MovableClock:
    """UTC now, plus an offset a test can advance."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


class InThreadControlPlane:
    def __init__(self, settings: Settings, clock: MovableClock) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.port}"
        self.app = create_app(settings, wall_clock=clock)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            ws_max_size=MAX_FRAME_BYTES + 1024,
            ws_per_message_deflate=False,
            ws_max_queue=64,
            ws_ping_interval=settings.tunnel_ping_interval_s,
            ws_ping_timeout=settings.tunnel_ping_timeout_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="control-plane", daemon=True)

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
        self.thread.join(30)


class CostStack:
    def __init__(
        self,
        cp: InThreadControlPlane,
        runner: RunnerProcess,
        database_url: str,
        clock: MovableClock,
        runner_id: str,
    ) -> None:
        self.cp, self.runner, self.database_url, self.clock, self.runner_id = (
            cp,
            runner,
            database_url,
            clock,
            runner_id,
        )

    @property
    def base_url(self) -> str:
        return f"{self.cp.url}/v1"

    def key(self, tenant: str, name: str = "k", admin: bool = False) -> tuple[str, str]:
        """A new API key: ``(key_id, secret)``."""
        return run_db(self.database_url, lambda db: issue_api_key(db, tenant, name, admin))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def cost_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CostStack]:
    tmp: Path = tmp_path_factory.mktemp(f"cost-{request.param}")
    db = _database(request.param, tmp)
    url = next(db)
    upgrade_to_head(url)
    clock = MovableClock()
    settings = Settings(
        state_dir=tmp / "cp",
        database_url=url,
        port=free_port(),
        scheduler_max_queue=8,
        scheduler_max_queue_per_tenant=QUEUE_PER_TENANT,
    )
    cp = InThreadControlPlane(settings, clock).start()
    # RunnerProcess only needs the control plane's URL; the token is made here.
    shim = ControlPlaneProcess(tmp / "cp", url, port=settings.port)
    # No fair headroom: the scheduling tests order what waits when the one slot is taken.
    runner = RunnerProcess(
        shim,
        tmp / "runner",
        "cost-runner",
        args=["--parallel", "1", "--headroom", "0", "--usd-per-hour", str(USD_PER_HOUR)],
    )
    try:
        token = run_db(url, lambda d: issue_enrollment_token(d, "runners", "cost-runner", 600))
        _, admin = run_db(url, lambda d: issue_api_key(d, "runners", "admin", True))
        run_db(
            url, lambda d: share_default_pool(d, "runners")
        )  # its runner serves every tenant's keys
        runner.start(token)
        runner_id = runner.wait_connected(admin)
        yield CostStack(cp, runner, url, clock, runner_id)
    finally:
        runner.stop()
        cp.stop()
        db.close()
