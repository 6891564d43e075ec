"""Appending to the hash chain: the only code that writes ``audit_events``.

Appends never fork the chain. Each append first *updates* the single
``audit_head`` row and only then reads the previous hash:

- PostgreSQL: the UPDATE takes the row lock (what ``SELECT ... FOR UPDATE``
  would) and holds it to the end of the transaction, so appenders in any
  number of processes queue on it and each one sees its predecessor's tip.
- SQLite: a write is the first statement that takes the database's single
  write lock (the driver opens the transaction lazily, at the first write),
  so the read that follows cannot race another writer. ``busy_timeout``
  makes later writers wait instead of failing.

The event row and the head move in the caller's transaction: they commit or
roll back together with the action being audited, so sequence numbers stay
contiguous. Keep the append the *last* write of a transaction: the head lock
is then held only for the commit, and no lock-order cycle can form.
"""

from __future__ import annotations

import functools
import secrets
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, TextClause, bindparam, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outpost.control_plane.db.models import AuditEvent, AuditHead
from outpost.control_plane.db.sqlite_raw import insert_many
from outpost.sdk.audit import GENESIS_HASH, canonical_json, chain_hash, event_digest

__all__ = [
    "EVENT_VERSION",
    "SYSTEM_TENANT",
    "EventSpec",
    "Head",
    "append_event",
    "append_events",
    "append_events_sqlite",
    "append_events_sync",
    "event_object",
    "format_ts",
    "lock_head",
    "lock_head_sync",
    "read_head",
    "utc_ts",
]

EVENT_VERSION = 2  # 2: with tenant_seq; events written before it stay version 1
_HEAD_ID = 1
#: The counter of the log's own, tenant-less events in ``audit_tenant_heads``.
SYSTEM_TENANT = ""


def format_ts(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601 with microseconds: sorts as text in time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_ts() -> str:
    return format_ts(datetime.now(UTC))


def event_object(row: AuditEvent | Row[Any]) -> dict[str, Any]:
    """The object that is canonicalised and hashed (docs/audit.md, "Events")."""
    event = {
        "v": 1,
        "seq": row.seq,
        "ts": row.ts,
        "type": row.type,
        "actor": row.actor,
        "tenant": row.tenant_id,
        "salt": row.salt,
        "data": row.data,
    }
    if row.tenant_seq is not None:  # version 1 events (older rows) must keep their hashes
        event.update(v=EVENT_VERSION, tenant_seq=row.tenant_seq)
    return event


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    checkpoint_seq: int
    checkpoint_ts: str | None
    anchor_seq: int


_HEAD_COLUMNS = (
    AuditHead.seq,
    AuditHead.hash,
    AuditHead.checkpoint_seq,
    AuditHead.checkpoint_ts,
    AuditHead.anchor_seq,
)
# A no-op UPDATE: it takes the row lock (PostgreSQL) or the write lock (SQLite) and returns the tip.
_LOCK_HEAD = (
    update(AuditHead)
    .where(AuditHead.id == _HEAD_ID)
    .values(seq=AuditHead.seq)
    .returning(*_HEAD_COLUMNS)
    .execution_options(synchronize_session=False)
)


def _ensure_head(conn: Session | Connection) -> None:
    # The migration creates the row; this covers schemas built some other way.
    values = {"id": _HEAD_ID, "seq": 0, "hash": GENESIS_HASH, "checkpoint_seq": 0, "anchor_seq": 0}
    insert = pg_insert if _dialect(conn) == "postgresql" else sqlite_insert
    conn.execute(insert(AuditHead).values(**values).on_conflict_do_nothing())


async def lock_head(session: AsyncSession) -> Head:
    """Take the chain lock for the rest of this transaction and return the tip."""
    return await session.run_sync(lock_head_sync)


def lock_head_sync(conn: Session | Connection) -> Head:
    """:func:`lock_head` on a synchronous session or connection."""
    row = conn.execute(_LOCK_HEAD).first()
    if row is None:
        _ensure_head(conn)
        row = conn.execute(_LOCK_HEAD).one()
    return Head(*row)


async def read_head(session: AsyncSession) -> Head:
    """The tip without locking (for deciding whether to lock at all)."""
    row = (await session.execute(select(*_HEAD_COLUMNS).where(AuditHead.id == _HEAD_ID))).first()
    return Head(*row) if row is not None else Head(0, GENESIS_HASH, 0, None, 0)


@dataclass(frozen=True)
class EventSpec:
    """One event to append: everything but its place in the chain."""

    type: str
    actor: str
    tenant_id: str | None
    data: dict[str, Any]


async def append_event(
    session: AsyncSession, *, type: str, actor: str, tenant_id: str | None, data: dict[str, Any]
) -> AuditEvent:
    """Append one event in the caller's transaction; returns the new row (not committed)."""
    return (await append_events(session, [EventSpec(type, actor, tenant_id, data)]))[0]


async def append_events(session: AsyncSession, events: list[EventSpec]) -> list[AuditEvent]:
    """Append ``events`` in this order, as consecutive sequence numbers, in the caller's
    transaction.

    The work is :func:`append_events_sync`, run in the session's greenlet: one
    switch for the lot instead of one per statement.
    """
    if not events:
        return []
    return await session.run_sync(append_events_sync, events)


def append_events_sync(conn: Session | Connection, events: list[EventSpec]) -> list[AuditEvent]:
    """:func:`append_events` on a synchronous session or connection.

    Four statements for any batch: head lock, one upsert of the tenants'
    counters, one head update and one multi-row insert of the events (on
    PostgreSQL the last two are one statement).
    """
    if not events:
        return []
    for ev in events:
        canonical_json(ev.data)  # refuse floats and the like before taking the lock
    if isinstance(conn, Session):
        conn.flush()  # everything the caller has pending goes out now, before the lock is taken
    head = lock_head_sync(conn)
    tenant_next = _number_tenants_sync(conn, events)
    rows = _chain(events, head.seq, head.hash, tenant_next)
    seq, prev = rows[-1].seq, rows[-1].hash
    # Every round trip made while holding the lock is one more wait for every
    # other appender, so the head and the events are written by Core statements
    # (no ORM flush), and on PostgreSQL by one statement.
    values = _values(rows)
    if _dialect(conn) == "postgresql":
        move_head = (
            update(AuditHead)
            .where(AuditHead.id == _HEAD_ID)
            .values(seq=seq, hash=prev)
            .execution_options(synchronize_session=False)
        )
        conn.execute(insert(AuditEvent).values(values).add_cte(move_head.cte("move_head")))
    else:
        conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
        # A statement compiled once (cached) and sent as one multi-row INSERT (insertmanyvalues).
        conn.execute(insert(AuditEvent), values)
    return rows


def append_events_sqlite(db: sqlite3.Connection, events: list[EventSpec]) -> list[AuditEvent]:
    """:func:`append_events_sync` on a plain ``sqlite3`` connection inside a write transaction.

    The record writer's SQLite path (services/record_sqlite.py): the same
    statements, numbering and hashes, without SQLAlchemy's per-statement cost.
    """
    if not events:
        return []
    for ev in events:
        canonical_json(ev.data)
    row = db.execute(_SQLITE_LOCK_HEAD, (_HEAD_ID,)).fetchone()
    if row is None:
        db.execute(
            "INSERT OR IGNORE INTO audit_head (id, seq, hash, checkpoint_seq, anchor_seq) "
            "VALUES (?, 0, ?, 0, 0)",
            (_HEAD_ID, GENESIS_HASH),
        )
        row = db.execute(_SQLITE_LOCK_HEAD, (_HEAD_ID,)).fetchone()
    counts, params = _tenant_counts(events)
    tops = db.execute(_upsert_tenant_heads(len(counts)).text, params).fetchall()
    rows = _chain(
        events, row[0], row[1], {tenant: top - counts[tenant] + 1 for tenant, top in tops}
    )
    db.execute(
        "UPDATE audit_head SET seq = ?, hash = ? WHERE id = ?",
        (rows[-1].seq, rows[-1].hash, _HEAD_ID),
    )
    insert_many(db, cast(Table, AuditEvent.__table__), _values(rows))
    return rows


_SQLITE_LOCK_HEAD = "UPDATE audit_head SET seq = seq WHERE id = ? RETURNING seq, hash"


def _chain(
    events: list[EventSpec], seq: int, prev: str, tenant_next: dict[str, int]
) -> list[AuditEvent]:
    """The events as rows after ``seq``/``prev``, numbered and hashed (``tenant_next`` is
    consumed)."""
    rows: list[AuditEvent] = []
    for ev in events:
        seq += 1
        counter = ev.tenant_id if ev.tenant_id is not None else SYSTEM_TENANT
        tenant_seq = tenant_next[counter]
        tenant_next[counter] += 1
        row = AuditEvent(
            seq=seq,
            ts=utc_ts(),
            type=ev.type,
            actor=ev.actor,
            tenant_id=ev.tenant_id,
            tenant_seq=tenant_seq,
            salt=secrets.token_hex(16),
            data=ev.data,
        )
        row.hash = prev = chain_hash(prev, event_digest(event_object(row)))
        rows.append(row)
    return rows


def _values(rows: list[AuditEvent]) -> list[dict[str, Any]]:
    return [
        {
            "seq": r.seq,
            "ts": r.ts,
            "type": r.type,
            "actor": r.actor,
            "tenant_id": r.tenant_id,
            "tenant_seq": r.tenant_seq,
            "salt": r.salt,
            "data": r.data,
            "hash": r.hash,
        }
        for r in rows
    ]


_MOVE_HEAD = (
    update(AuditHead)
    .where(AuditHead.id == _HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
    .execution_options(synchronize_session=False)
)


def _dialect(conn: Session | Connection) -> str:
    return conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name


async def _number_tenants(session: AsyncSession, events: list[EventSpec]) -> dict[str, int]:
    return await session.run_sync(_number_tenants_sync, events)


def _number_tenants_sync(conn: Session | Connection, events: list[EventSpec]) -> dict[str, int]:
    """Reserve each tenant's next ``tenant_seq`` values; returns the first one per tenant.

    Called under the head lock, so tenant numbers follow the global order. One
    upsert that adds the batch's count and returns the new top: no read first,
    so it costs one round trip however many tenants the batch holds.
    """
    counts, params = _tenant_counts(events)
    # A text() statement's rows are untyped; the upsert returns (tenant_id, top) pairs.
    tops = cast(
        "list[tuple[str, int]]", conn.execute(_upsert_tenant_heads(len(counts)), params).all()
    )
    return {tenant: top - counts[tenant] + 1 for tenant, top in tops}


def _tenant_counts(events: list[EventSpec]) -> tuple[Counter[str], dict[str, Any]]:
    """Events per tenant counter, and the parameters of :func:`_upsert_tenant_heads` for them."""
    counts = Counter(ev.tenant_id if ev.tenant_id is not None else SYSTEM_TENANT for ev in events)
    params: dict[str, Any] = {}
    for i, (tenant, n) in enumerate(sorted(counts.items())):
        params[f"t{i}"], params[f"n{i}"] = tenant, n
    return counts, params


@functools.lru_cache(maxsize=256)  # one per distinct tenant count in a batch
def _upsert_tenant_heads(rows: int) -> TextClause:
    # Plain SQL, the same on PostgreSQL and SQLite: the dialects' insert().on_conflict_do_update()
    # is compiled afresh on every call (~0.6 ms of CPU while the head lock is held).
    values = ", ".join(f"(:t{i}, :n{i})" for i in range(rows))
    return text(
        f"INSERT INTO audit_tenant_heads (tenant_id, seq) VALUES {values} "
        "ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_tenant_heads.seq + excluded.seq "
        "RETURNING tenant_id, seq"
    )
