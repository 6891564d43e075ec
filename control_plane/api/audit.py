"""The audit log over HTTP: a tenant's admins read and export their own tenant's events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from outpost.control_plane.api.deps import AppStateDep, AuditReadDep, CallerDep, SessionDep
from outpost.control_plane.audit.chain import read_head
from outpost.control_plane.audit.export import checkpoint_line, export_records, jsonl, key_line
from outpost.control_plane.audit.query import list_events
from outpost.control_plane.audit.schemas import (
    AuditEventOut,
    AuditPage,
    AuditQuery,
    CheckpointQuery,
)
from outpost.control_plane.db.models import AuditCheckpoint, AuditKey
from outpost.control_plane.errors import ApiError

router = APIRouter(prefix="/api/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
async def get_audit_events(
    admin: AuditReadDep, session: SessionDep, query: Annotated[AuditQuery, Query()]
) -> AuditPage:
    rows = await list_events(session, admin.tenant_id, query)
    page = rows[: query.limit]
    next_cursor = str(page[-1].seq) if len(rows) > query.limit else None
    return AuditPage(data=[AuditEventOut.model_validate(r) for r in page], next_cursor=next_cursor)


@router.get("/export")
async def export_audit(admin: AuditReadDep, state: AppStateDep) -> StreamingResponse:
    """The tenant-scoped chain up to the latest signed checkpoint, so every line is vouched for."""

    async def lines() -> AsyncIterator[str]:
        async with state.db.session() as session:
            signed = (await read_head(session)).checkpoint_seq
            async for record in export_records(
                session, tenant_id=admin.tenant_id, until_seq=signed
            ):
                yield jsonl(record)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="audit.jsonl"'},
    )


@router.get("/keys")
async def get_audit_keys(caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """Every audit public key, with rotation records (public material)."""
    rows = (await session.execute(select(AuditKey).order_by(AuditKey.created_at))).scalars()
    return {"object": "list", "data": [key_line(r) for r in rows]}


@router.get("/checkpoints")
async def get_audit_checkpoints(
    admin: AuditReadDep, session: SessionDep, query: Annotated[CheckpointQuery, Query()]
) -> dict[str, Any]:
    """Signed checkpoints, oldest first: keep them, and ``audit verify --kept`` catches a
    truncated log."""
    rows = list(
        (
            await session.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.seq > query.after)
                .order_by(AuditCheckpoint.seq)
                .limit(query.limit + 1)
            )
        ).scalars()
    )
    page = rows[: query.limit]
    more = str(page[-1].seq) if len(rows) > query.limit else None
    return {"object": "list", "data": [checkpoint_line(r) for r in page], "next_cursor": more}


@router.get("/checkpoints/latest")
async def get_latest_audit_checkpoint(admin: AuditReadDep, session: SessionDep) -> dict[str, Any]:
    row = (
        await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1))
    ).scalar()
    if row is None:
        raise ApiError.not_found(
            "No audit checkpoint has been signed yet.", code="audit_checkpoint_not_found"
        )
    return checkpoint_line(row)
