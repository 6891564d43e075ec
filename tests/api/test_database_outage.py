"""The database goes away: requests get a clear 503, not a 500 with a traceback, and service
resumes by itself.

Real PostgreSQL: the test forbids connections to the control plane's database and ends the
ones it holds, as a failover or a restart of the database server would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.processes import ControlPlaneProcess, wait_until
from tests.conftest import PG_ADMIN, _database


def _allow_connections(name: str, allow: bool) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[ControlPlaneProcess, str]]:
    db = _database("postgres", tmp_path)
    url = next(db)
    cp = ControlPlaneProcess(tmp_path / "cp", url).start()
    name = url.rsplit("/", 1)[1]
    try:
        yield cp, name
    finally:
        _allow_connections(name, True)
        cp.stop()
        db.close()


def test_database_outage_is_a_503_and_heals(outage: tuple[ControlPlaneProcess, str]) -> None:
    cp, name = outage
    key = cp.api_key(
        "default", "outage"
    )  # never used yet: not in the key cache, so it needs the database
    headers = {"Authorization": f"Bearer {key}"}
    _allow_connections(name, False)
    resp = httpx.get(f"{cp.url}/v1/models", headers=headers, timeout=30)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "database_unavailable"
    assert resp.headers["retry-after"] == "2"
    assert cp.proc is not None and cp.proc.poll() is None
    assert "Traceback" not in cp.log() and "database unavailable" in cp.log()

    _allow_connections(name, True)
    wait_until(
        lambda: httpx.get(f"{cp.url}/v1/models", headers=headers, timeout=10).status_code == 200,
        30,
        "the control plane to reconnect to the database",
    )
