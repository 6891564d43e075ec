"""The record writer's own SQLite path (services/record_sqlite.py): plain ``sqlite3`` statements in
one thread, checked against what the ORM writes, and group commit without a fixed linger."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from harness.processes import wait_until
from outpost.control_plane.audit.events import record_inference
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import AuditEvent, RequestRecord, new_id
from outpost.control_plane.db.rows import RequestRow
from outpost.control_plane.services.record_writer import RecordWriter
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.tenants import get_or_create_tenant
from tests.request_path.test_record_writer import database_held, inference_events


def _path(url: str) -> str:
    return url.split("///", 1)[1]


def _stored(url: str, table: str, where: str, *args: object) -> dict[str, object]:
    """A row as SQLite holds it (not as SQLAlchemy reads it back): types and text formats matter."""
    with sqlite3.connect(_path(url)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
        kinds = conn.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
        assert row is not None and kinds is not None
        return {key: (row[key], type(row[key]).__name__) for key in row.keys()}  # noqa: SIM118


def _record(tenant_id: str, **fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "tenant_id": tenant_id,
        "api_key_id": None,
        "model": "m",
        "endpoint": "/v1/chat/completions",
        "status": "ok",
        "http_status": 200,
    }
    return RequestRecord(id=new_id("req"), **{**values, **fields})


def _row(tenant_id: str, **fields: Any) -> RequestRow:
    """The same record as the request path hands it to the writer (db/rows.py)."""
    return RequestRow(**_fields(_record(tenant_id, **fields)))


def _fields(record: RequestRecord) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(RequestRow)]
    return {k: v for k in names if (v := getattr(record, k)) is not None}


async def _tenant(db: Database) -> str:
    async with db.session() as session:
        tenant = await get_or_create_tenant(session, "sqlite-writer")
        await session.commit()
        return tenant.id


async def test_the_sqlite_path_stores_records_and_events_exactly_as_the_orm_does(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}"
    upgrade_to_head(url)
    db = Database(url)
    try:
        tenant = await _tenant(db)
        moment = datetime(2026, 12, 7, 11, 30, 5, 123456, tzinfo=UTC)
        # Everything a request can set, with values the schema allows but nobody meant (quotes,
        # SQL, non-ASCII), and the fields left to their defaults.
        fields: dict[str, object] = {
            "model": "m'); DROP TABLE request_records; --\u00e9\u4e2d",
            "stream": True,
            "e2e": True,
            "runner_id": "run_x",
            "api_key_id": 'key_"y',
            "attempts": 3,
            "prompt_tokens": 7,
            "completion_tokens": 64,
            "ttft_ms": 12.25,
            "latency_ms": 1280.5,
            "cost_usd": 0.000125,
            "bytes_out": 2**40,
            "error_type": None,
            "created_at": moment,
        }
        by_orm, by_writer = _record(tenant, **fields), _row(tenant, **fields)
        # defaults: stream, e2e, counts, created_at
        bare_orm, bare_writer = _record(tenant), _row(tenant)
        async with db.session() as session:
            session.add_all([by_orm, bare_orm])
            await session.flush()
            await record_inference(session, by_orm)
            await session.commit()

        writer = RecordWriter(db)
        await writer.start()
        assert await writer.commit(by_writer, timeout=30)
        assert await writer.commit(bare_writer, timeout=30)
        await writer.stop()

        for orm, written in ((by_orm, by_writer), (bare_orm, bare_writer)):
            a = _stored(url, "request_records", "id = ?", orm.id)
            b = _stored(url, "request_records", "id = ?", written.id)
            a.pop("id"), b.pop("id")
            if orm is bare_orm:  # written at different moments: same format, different value
                assert a.pop("created_at")[1] == b.pop("created_at")[1] == "str"
            assert a == b

        event_orm = _stored(
            url, "audit_events", "json_extract(data, '$.request_id') = ?", by_orm.id
        )
        event_writer = _stored(
            url, "audit_events", "json_extract(data, '$.request_id') = ?", by_writer.id
        )
        for key in ("seq", "ts", "salt", "hash", "tenant_seq", "data"):
            assert event_orm[key][1] == event_writer[key][1], key
        assert event_writer["data"][0] == event_orm["data"][0].replace(by_orm.id, by_writer.id)

        # Read back through the ORM, the writer's rows are what was submitted.
        async with db.session() as session:
            got = (
                await session.execute(select(RequestRecord).where(RequestRecord.id == by_writer.id))
            ).scalar_one()
            assert got.model == fields["model"] and got.stream is True and got.bytes_out == 2**40
            assert got.created_at.replace(tzinfo=UTC) == moment
            bare = (
                await session.execute(
                    select(RequestRecord).where(RequestRecord.id == bare_writer.id)
                )
            ).scalar_one()
            assert (bare.stream, bare.e2e, bare.prompt_tokens, bare.attempts, bare.bytes_out) == (
                False,
                False,
                0,
                1,
                0,
            )
            events = (
                (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars().all()
            )
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert [e.tenant_seq for e in events if e.tenant_id == tenant] == list(
                range(1, len(events) + 1)
            )
    finally:
        await db.dispose()


async def test_records_that_queue_during_a_commit_share_the_next_one_without_lingering(
    tmp_path: Path,
) -> None:
    """Group commit: no fixed linger, and what queued while a batch committed goes in the next."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'outpost.db'}"
    upgrade_to_head(url)
    db = Database(url)
    settings = Settings()
    assert settings.records_linger_s <= 0.005, "the end of every response waits for its batch"
    try:
        tenant = await _tenant(db)
        writer = RecordWriter.from_settings(db, settings.model_copy(update={"state_dir": tmp_path}))
        await writer.start()
        first = _row(tenant)
        with database_held(url):
            done = writer.submit(first)
            # The writer's thread exists once the first batch has gone to it (it waits on the lock).
            await asyncio.to_thread(
                wait_until,
                lambda: any(t.name.startswith("record-writer") for t in threading.enumerate()),
                30,
                "the first batch",
            )
            rest = [_row(tenant) for _ in range(5)]
            waits = [writer.submit(r) for r in rest]
        assert await writer.wait(done, 30)
        assert all(await asyncio.gather(*(writer.wait(w, 30) for w in waits)))
        assert writer.batches == 2, "the records that came during the first commit share the second"
        await writer.stop()
        assert list(inference_events(url)) == [r.id for r in [first, *rest]]
    finally:
        await db.dispose()
