"""Fixtures for the audit log: a migrated database of each backend and a signing key."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.processes import ControlPlaneProcess
from outpost.control_plane.audit import record_admin
from outpost.control_plane.audit.checkpoints import write_checkpoint
from outpost.control_plane.audit.export import export_records, jsonl
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head

BACKENDS = pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def db(fresh_database_url: str) -> AsyncIterator[Database]:
    upgrade_to_head(fresh_database_url)
    database = Database(fresh_database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def signer(tmp_path: Path) -> AuditSigner:
    return AuditSigner(tmp_path / "keys" / "audit-key.json")


async def add_admin_events(
    db: Database, n: int, tenants: tuple[str, ...] = ("ten_a", "ten_b"), start: int = 0
) -> None:
    for i in range(start, start + n):
        async with db.session() as session:
            await record_admin(
                session,
                actor="operator:test",
                action="api_key.create",
                tenant_id=tenants[i % len(tenants)],
                target=f"key_{i}",
                details={"i": i},
            )
            await session.commit()


async def checkpoint(db: Database, signer: AuditSigner) -> None:
    async with db.session() as session:
        await write_checkpoint(session, signer)
        await session.commit()


async def export_lines(db: Database, tenant_id: str | None = None) -> list[str]:
    async with db.session() as session:
        return [jsonl(r).rstrip("\n") async for r in export_records(session, tenant_id=tenant_id)]


def kinds(lines: list[str]) -> list[str]:
    return [json.loads(line)["kind"] for line in lines]


def run_cli(cp: ControlPlaneProcess, *args: str, timeout: float = 300) -> str:
    """``cp.cli`` with a longer timeout: on a loaded CI machine a CLI start alone can take many
    seconds."""
    out = subprocess.run(
        [sys.executable, "-m", "outpost.control_plane.cli", *args],
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"control-plane {' '.join(args)} failed ({out.returncode}): {out.stdout}{out.stderr}"
        )
    return out.stdout.strip()
