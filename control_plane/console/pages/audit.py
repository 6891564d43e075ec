"""The audit log: events with filters, the chain's state, on-demand verification, and the export."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.audit.chain import read_head
from outpost.control_plane.audit.export import export_records, jsonl
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.audit.schemas import AuditQuery
from outpost.control_plane.console.deps import AuditUserDep, render
from outpost.control_plane.console.queries import audit_page
from outpost.control_plane.state import AppState
from outpost.sdk.audit import VerifyResult, verify_export

router = APIRouter(include_in_schema=False)

#: Type prefixes offered in the filter (any other prefix can be typed).
EVENT_TYPES = ("admin", "auth", "inference", "runner", "fairness", "audit")
PAGE = 50


def _time(raw: str | None) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(raw)


async def verify_tenant_chain(state: AppState, tenant_id: str) -> VerifyResult:
    """What an auditor would run offline, run here: the tenant's export checked against the key on
    disk.

    The public key comes from the control plane's key file, not the database,
    so rows rewritten in the database do not vouch for themselves.
    """
    public_key = AuditSigner.from_settings(state.settings).current().public_key
    async with state.db.session() as session:
        records = [r async for r in export_records(session, tenant_id=tenant_id)]
    return await asyncio.to_thread(verify_export, records, [public_key])


@router.get("/audit")
async def audit(
    request: Request,
    state: AppStateDep,
    user: AuditUserDep,
    type: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
    verify: Annotated[bool, Query()] = False,
) -> Response:
    filters = {"type": type or "", "actor": actor or "", "since": since or "", "until": until or ""}
    error = None
    try:
        query = AuditQuery(
            type=type or None,
            actor=actor or None,
            since=_time(since),
            until=_time(until),
            limit=PAGE,
        )
    except (ValidationError, ValueError):
        error = (
            "Check the filters: a type is lowercase dotted words; times look like 2026-11-27T14:00."
        )
        query = AuditQuery(limit=PAGE)
    async with state.db.session() as session:
        rows = await audit_page(session, user.tenant_id, query, before_seq=before)
        head = await read_head(session)
    events, older = rows[:PAGE], (rows[PAGE - 1].seq if len(rows) > PAGE else None)
    result = await verify_tenant_chain(state, user.tenant_id) if verify else None
    key = AuditSigner.from_settings(state.settings).current()
    return render(
        request,
        "audit.html",
        user,
        active="/audit",
        events=events,
        older=older,
        filters=filters,
        filter_error=error,
        head=head,
        result=result,
        event_types=EVENT_TYPES,
        audit_key=key,
        paged=before is not None,
    )


@router.get("/audit/export")
async def audit_export(state: AppStateDep, user: AuditUserDep) -> StreamingResponse:
    """The tenant-scoped JSONL export, as ``GET /api/audit/export``: others' events redacted to
    digests, up to
    the latest signed checkpoint so that every line is vouched for."""

    async def lines() -> AsyncIterator[str]:
        async with state.db.session() as session:
            signed = (await read_head(session)).checkpoint_seq
            async for record in export_records(session, tenant_id=user.tenant_id, until_seq=signed):
                yield jsonl(record)

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={
            "content-disposition": 'attachment; filename="audit.jsonl"',
            "cache-control": "no-store",
        },
    )
