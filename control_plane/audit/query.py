"""Reading audit events for the API: tenant-scoped, filtered, keyset-paginated by seq."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.chain import format_ts
from outpost.control_plane.audit.schemas import AuditQuery
from outpost.control_plane.db.models import AuditEvent

__all__ = ["list_events"]


async def list_events(session: AsyncSession, tenant_id: str, query: AuditQuery) -> list[AuditEvent]:
    """One page (``query.limit`` + 1 rows, so the caller can tell whether more follow)."""
    stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if query.type:
        # "admin" matches "admin" and "admin.*"; autoescape keeps "_" literal.
        stmt = stmt.where(
            or_(
                AuditEvent.type == query.type,
                AuditEvent.type.startswith(query.type + ".", autoescape=True),
            )
        )
    if query.actor:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    # Timestamps are fixed-width UTC strings, so text order is time order.
    if query.since:
        stmt = stmt.where(AuditEvent.ts >= format_ts(query.since))
    if query.until:
        stmt = stmt.where(AuditEvent.ts < format_ts(query.until))
    if query.cursor:
        stmt = stmt.where(AuditEvent.seq > int(query.cursor))
    stmt = stmt.order_by(AuditEvent.seq).limit(query.limit + 1)
    return list((await session.execute(stmt)).scalars())
