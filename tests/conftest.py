"""Shared fixtures: real databases, a real control plane, a real runner + engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.databases import PG_ADMIN
from harness.databases import database as _database
from harness.processes import ControlPlaneProcess, RunnerProcess

__all__ = ["PG_ADMIN", "Stack", "_database"]


@pytest.fixture
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend named by ``request.param`` (sqlite or postgres)."""
    yield from _database(getattr(request, "param", "sqlite"), tmp_path)


class Stack:
    """A control plane, one enrolled runner with the embedded model, and an API key."""

    def __init__(
        self,
        cp: ControlPlaneProcess,
        runner: RunnerProcess,
        api_key: str,
        database_url: str,
        runner_id: str,
    ) -> None:
        self.cp, self.runner, self.api_key, self.database_url = cp, runner, api_key, database_url
        self.runner_id = runner_id

    @property
    def base_url(self) -> str:
        return f"{self.cp.url}/v1"


def build_stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start a control plane on ``backend`` and one runner; stop both afterwards."""
    tmp = tmp_path_factory.mktemp(f"stack-{backend}")
    db = _database(backend, tmp)
    url = next(db)
    cp = ControlPlaneProcess(tmp / "cp", url).start()
    runner = RunnerProcess(cp, tmp / "runner", "local")
    try:
        api_key = cp.api_key()
        runner.start()
        runner_id = runner.wait_connected(api_key)
        yield Stack(cp, runner, api_key, url, runner_id)
    finally:
        runner.stop()
        cp.stop()
        db.close()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    yield from build_stack(request.param, tmp_path_factory)
