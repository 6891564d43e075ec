"""Request records: usage and timing of each inference request, never content."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import RequestRecord

__all__ = ["add_request_record", "add_request_records"]


async def add_request_record(session: AsyncSession, record: RequestRecord) -> RequestRecord:
    session.add(record)
    await session.flush()
    return record


async def add_request_records(session: AsyncSession, records: list[RequestRecord]) -> list[RequestRecord]:
    """Insert a batch in one round trip (SQLAlchemy's insertmanyvalues)."""
    session.add_all(records)
    await session.flush()
    return records

