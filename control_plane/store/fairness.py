"""Bias-probe runs. Functions take a session, never commit, return rows or None.

Every read is scoped to a tenant: another tenant's run does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import ApiKey, FairnessRun, new_id, utcnow
from outpost.control_plane.probes.schemas import RunDocument, RunStatus, RunSummary
from outpost.control_plane.store.changes import mark_key_changed

__all__ = [
    "create_fairness_run",
    "finish_fairness_run",
    "get_fairness_run",
    "list_fairness_runs",
    "revoke_probe_key",
    "run_document",
    "set_fairness_progress",
]


def run_document(run: FairnessRun) -> RunDocument:
    return RunDocument.model_validate(run.report)


async def create_fairness_run(
    session: AsyncSession,
    *,
    tenant_id: str,
    suite_id: str,
    suite_version: str,
    suite_hash: str,
    model: str,
    sampling: dict[str, Any],
    document: RunDocument,
    status: RunStatus = "running",
    finished_at: datetime | None = None,
) -> FairnessRun:
    run = FairnessRun(
        id=new_id("fair"),
        tenant_id=tenant_id,
        suite_id=suite_id,
        suite_version=suite_version,
        suite_hash=suite_hash,
        model=model,
        sampling=sampling,
        status=status,
        report=document.model_dump(mode="json"),
        finished_at=finished_at,
    )
    session.add(run)
    await session.flush()
    return run


async def get_fairness_run(
    session: AsyncSession, run_id: str, tenant_id: str
) -> FairnessRun | None:
    stmt = select(FairnessRun).where(FairnessRun.id == run_id, FairnessRun.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_fairness_runs(
    session: AsyncSession,
    tenant_id: str,
    *,
    limit: int = 50,
) -> list[tuple[Row[Any], RunSummary]]:
    """Newest first: the run's columns and its summary, without loading reports or responses."""
    summary = FairnessRun.report["summary"]
    stmt = (
        select(
            FairnessRun.id,
            FairnessRun.status,
            FairnessRun.model,
            FairnessRun.suite_id,
            FairnessRun.suite_version,
            FairnessRun.suite_hash,
            FairnessRun.sampling,
            FairnessRun.created_at,
            FairnessRun.finished_at,
            summary.label("summary"),
        )
        .where(FairnessRun.tenant_id == tenant_id)
        .order_by(FairnessRun.created_at.desc(), FairnessRun.id)
        .limit(limit)
    )
    rows = (await session.execute(stmt)).all()
    return [(row, RunSummary.model_validate(row.summary)) for row in rows]


async def set_fairness_progress(
    session: AsyncSession, run: FairnessRun, *, done: int, errors: int
) -> None:
    document = run_document(run)
    document.summary.progress.done, document.summary.progress.errors = done, errors
    run.report = document.model_dump(mode="json")  # a new dict: JSON columns track assignment only
    await session.flush()


async def finish_fairness_run(
    session: AsyncSession, run: FairnessRun, *, status: RunStatus, document: RunDocument
) -> None:
    run.status, run.report, run.finished_at = status, document.model_dump(mode="json"), utcnow()
    await session.flush()


async def revoke_probe_key(session: AsyncSession, key_id: str) -> None:
    """Retire a run's own API key once the run is over (it is never shown to anyone)."""
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.execute(stmt)
    mark_key_changed(session, key_ids=[key_id])  # a Core UPDATE: the ORM cannot see it
