"""The record writer's own SQLite connection: a whole batch in one hop into one thread.

Through aiosqlite every statement is several hops between the event loop and
the driver's thread (cursor, execute, fetch, close), each a queue put, a
thread wake-up and a callback back into the loop, and SQLAlchemy's
per-statement work on top: a batch of five statements and a commit made
about 35 hops and cost some 2.5 ms of the control plane's CPU, whatever it
held (docs/performance.md, "Durable before done"). Here a batch is one call
into a dedicated thread that runs plain ``sqlite3`` statements: the same rows
(db/sqlite_raw.py stores values exactly as SQLAlchemy does) and the same
audit chain (audit/chain.py, ``append_events_sqlite``).

The connection gets the app engine's pragmas (db/engine.py): it waits on the
same write lock (``busy_timeout``) and commits with the same durability, WAL
with SQLite's default ``synchronous=FULL``: the log is fsynced at every
commit, so a committed record survives a power cut, not only a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from typing import cast

from sqlalchemy import Table

from outpost.control_plane.audit.chain import append_events_sqlite
from outpost.control_plane.audit.events import inference_events
from outpost.control_plane.db.engine import sqlite_pragmas, sync_url
from outpost.control_plane.db.models import RequestRecord
from outpost.control_plane.db.rows import RequestRow
from outpost.control_plane.db.sqlite_raw import insert_many

__all__ = ["SqliteWriterConnection"]

_RECORDS = cast(Table, RequestRecord.__table__)
_RECORD_KEYS = tuple(column.key for column in _RECORDS.columns)


class SqliteWriterConnection:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = (
            None  # opened, used and closed only in the thread below
        )
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="record-writer"
        )

    @classmethod
    def for_url(cls, url: str) -> SqliteWriterConnection | None:
        """One for a SQLite *file*; ``None`` otherwise (PostgreSQL, or an in-memory database that a
        second connection would not see): the writer then uses the app's async engine."""
        if not url.startswith("sqlite") or "///" not in url or ":memory:" in url or "?" in url:
            return None  # (a URL with query parameters is left to the engine that understands them)
        path = sync_url(url).split("///", 1)[1]
        return cls(path) if path else None

    async def write(self, records: list[RequestRow]) -> None:
        """Insert ``records`` and their ``inference`` events in one transaction, committed."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, records)

    def _write(self, records: list[RequestRow]) -> None:
        db = self._connect()
        # IMMEDIATE: the write lock first (waiting up to busy_timeout), so the transaction never has
        # to upgrade a read snapshot that another writer made stale.
        db.execute("BEGIN IMMEDIATE")
        try:
            insert_many(
                db, _RECORDS, ({key: getattr(r, key) for key in _RECORD_KEYS} for r in records)
            )
            # Same transaction: a request is recorded and audited, or neither.
            append_events_sqlite(db, inference_events(records))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None
            )  # transactions explicit
            sqlite_pragmas(db, None)
            self._db = db
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        """Close the connection in its own thread (after any write still running there)."""
        self._thread.submit(self._close)
        self._thread.shutdown(wait=False)
