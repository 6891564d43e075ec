"""A small real audit export (events, checkpoints, a key rotation), built once per test process."""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path

from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from tests.audit.conftest import add_admin_events, checkpoint, export_lines

_TMP = tempfile.TemporaryDirectory(prefix="outpost-audit-sample-")


@functools.cache
def sample_export() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(export lines of a tenant-wide chain, the pinned public keys)."""

    async def build() -> tuple[tuple[str, ...], tuple[str, ...]]:
        url = f"sqlite+aiosqlite:///{Path(_TMP.name) / 'audit.db'}"
        upgrade_to_head(url)
        db = Database(url)
        try:
            signer = AuditSigner(Path(_TMP.name) / "keys" / "audit-key.json")
            await add_admin_events(db, 4)
            await checkpoint(db, signer)
            await add_admin_events(db, 3, start=4)
            await checkpoint(db, signer)
            return tuple(await export_lines(db)), (signer.current().public_key,)
        finally:
            await db.dispose()

    return asyncio.run(build())
