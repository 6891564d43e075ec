"""Audit writes that own their transaction, for code paths that hold no session.

They never raise: the path they observe (a tunnel closing, a server shutting
down) must go on. A failure is logged with the event's type.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from outpost.control_plane.audit.events import RunnerEvent, record_runner_event
from outpost.control_plane.db.engine import Database

__all__ = ["audit_runner_event"]

log = logging.getLogger("outpost.audit")
_pending: set[asyncio.Task[None]] = set()


async def _write_runner_event(
    db: Database,
    event: RunnerEvent,
    runner_id: str,
    tenant_id: str,
    details: Mapping[str, Any] | None,
) -> None:
    try:
        async with db.session() as session:
            await record_runner_event(
                session, event=event, runner_id=runner_id, tenant_id=tenant_id, details=details
            )
            await session.commit()
    except Exception:
        log.exception("could not audit runner.%s for %s", event, runner_id)


async def audit_runner_event(
    db: Database,
    event: RunnerEvent,
    *,
    runner_id: str,
    tenant_id: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append ``runner.<event>`` in its own transaction.

    Shielded: called from a ``finally`` of a cancelled task (a tunnel torn
    down at shutdown), the write still completes.
    """
    task = asyncio.get_running_loop().create_task(
        _write_runner_event(db, event, runner_id, tenant_id, details)
    )
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    await asyncio.shield(task)
