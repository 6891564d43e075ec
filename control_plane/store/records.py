"""Request records: usage and timing of each inference request, never content."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outpost.control_plane.db.models import RequestRecord
from outpost.control_plane.db.rows import RequestRow

__all__ = ["add_request_record", "add_request_records", "insert_request_records_sync"]


async def add_request_record(session: AsyncSession, record: RequestRecord) -> RequestRecord:
    session.add(record)
    await session.flush()
    return record


async def add_request_records(
    session: AsyncSession, records: list[RequestRecord]
) -> list[RequestRecord]:
    """Insert a batch in one round trip (SQLAlchemy's insertmanyvalues)."""
    session.add_all(records)
    await session.flush()
    return records


def insert_request_records_sync(conn: Session | Connection, records: list[RequestRow]) -> None:
    """Insert a batch as one cached Core statement (no unit of work): the record writer's path.

    Column defaults are filled in here because an
    executemany needs the same keys in every row.
    """
    conn.execute(insert(RequestRecord), [_row(r) for r in records])


def _row(record: RequestRow) -> dict[str, Any]:
    row = {}
    for key, column in _COLUMNS.items():
        value = getattr(record, key)
        if value is None and column.default is not None:
            value = column.default.arg(None) if column.default.is_callable else column.default.arg
        row[key] = value
    return row


_COLUMNS = {column.key: column for column in RequestRecord.__table__.columns}
