"""Request records and their audit events, written by one task in batches (docs/performance.md).

Every inference request ends with a request record and an ``inference``
audit event, committed together. Written one by one, each took a pooled
connection, the audit chain's head lock and a commit: under load the writes
queued on the database, held connections while they waited, and starved the
request path until the pool timed out and records were lost.

Now a request hands its record to :meth:`RecordWriter.submit`, which never
blocks and never fails, and one writer task commits whatever has queued up
— up to ``max_batch`` records and their events in one transaction, one head
lock, in submission order. So the chain stays contiguous and in order, and
the writer holds at most one connection.

:meth:`submit` returns a future that resolves when the record is committed:
the end of a response waits on it (durable before done, docs/audit.md), so
a crash cannot lose an answered request. That wait is about one or two
commits: this is classic group commit. A transaction starts as soon as the
previous one has finished and a record is waiting, and takes everything
that queued meanwhile; there is no fixed linger. ``linger_s`` (a few ms by
default) lets a batch wait for more only while records come closer together
than that; :meth:`flush`, :meth:`stop` and a full batch cut it short.

What made group commit need a long linger was the transaction's fixed cost
on the event loop that relays every stream. On SQLite the writer now has its
own connection in its own thread (services/record_sqlite.py): one hop per
batch and plain ``sqlite3`` statements, about 0.5 ms of CPU for a
one-record transaction instead of 2.5 ms through aiosqlite and SQLAlchemy
(docs/performance.md, "Durable before done"). On PostgreSQL the batch's
statements run in one greenlet switch (``run_sync``), four round trips and
the commit; ``synchronous_commit`` is left on.

Nothing accepted is lost:

* a failed batch is retried, with exponential backoff (full jitter, up to
  ``retry_max_s``), for as long as it takes: a slow, locked or unreachable
  database delays records, it does not drop them. Before a retry the writer
  asks which of the batch's records did commit (a commit whose answer was
  lost), so none is written twice;
* a record the database refuses for good (not a connection or lock problem)
  is split from its batch and logged at ERROR with every field — loud, never
  silent — so one bad row cannot hold the others back;
* the queue is bounded by *admission*: while ``max_queue`` records wait,
  :meth:`check_capacity` refuses new requests with a 503 before they are
  accepted. Requests already running still submit their records, so memory
  is bounded by ``max_queue`` plus the requests in flight;
* :meth:`stop` (the app's lifespan) drains the queue before the database
  closes; what it could not write in ``drain_s`` goes to the spill file
  (services/record_spill.py), which :meth:`start` replays (without a spill
  file: logged at ERROR with every field).

:meth:`flush` waits until everything submitted so far is committed — for
tests and for code that must read its own records back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from outpost.control_plane.audit.events import record_inferences_sync
from outpost.control_plane.db.engine import Database, database_down
from outpost.control_plane.db.rows import RequestRow
from outpost.control_plane.errors import ApiError
from outpost.control_plane.services.record_spill import load_spilled, spill
from outpost.control_plane.services.record_sqlite import SqliteWriterConnection
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.budgets import committed_ids
from outpost.control_plane.store.records import insert_request_records_sync

__all__ = ["RecordWriter"]

log = logging.getLogger("outpost.records")


def _transient(exc: BaseException) -> bool:
    """The database is busy or gone right now: retry the same batch."""
    return database_down(exc) or isinstance(
        exc, ConnectionError | TimeoutError | OSError | sqlite3.OperationalError
    )


class RecordWriter:
    def __init__(
        self,
        db: Database,
        *,
        max_queue: int = 10_000,
        max_batch: int = 256,
        linger_s: float = 0.0,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        drain_s: float = 30.0,
        on_committed: Callable[[list[str]], None] | None = None,
        spill_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.clock = clock  # the linger's: when records came, and how far apart
        self.spill_path = spill_path
        self._replaying: set[str] = (
            set()
        )  # spilled ids not yet written again; the file goes when it empties
        self.max_queue, self.max_batch, self.linger_s = max_queue, max_batch, linger_s
        self.retry_initial_s, self.retry_max_s, self.drain_s = retry_initial_s, retry_max_s, drain_s
        self.on_committed = (
            on_committed  # ids just committed (budgets stop counting them as pending)
        )
        self._queue: deque[RequestRow] = deque()
        self._since: deque[float] = (
            deque()
        )  # when each queued record was submitted (the linger's clock)
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # a flush, a stop or a full batch: stop lingering
        self._flushing = 0  # flush() calls waiting: no lingering while someone waits
        self._committed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._sqlite: SqliteWriterConnection | None = (
            None  # SQLite file: the writer's own connection
        )
        self._closed = False
        self._waiters: dict[str, asyncio.Future[bool]] = {}  # record id -> what submit() returned
        self._failing_since: float | None = None  # the current batch's first transient failure
        self._last_submit: float | None = None
        self._gap = 0.0  # smoothed seconds between submitted records: 0 until measured (linger)
        # Counters: submitted == written + failed + spilled + queued (+ the batch in hand).
        self.submitted = self.written = self.failed = self.spilled = self.batches = self.retries = 0
        self.late = (
            0  # waits that timed out (responses that completed before their record committed)
        )

    @classmethod
    def from_settings(
        cls,
        db: Database,
        settings: Settings,
        on_committed: Callable[[list[str]], None] | None = None,
    ) -> RecordWriter:
        return cls(
            db,
            max_queue=settings.records_queue_max,
            max_batch=settings.records_batch_max,
            linger_s=settings.records_linger_s,
            retry_max_s=settings.records_retry_max_s,
            drain_s=settings.records_drain_s,
            on_committed=on_committed,
            spill_path=settings.records_spill_file
            or settings.state_dir / "unwritten-records.jsonl",
        )

    @property
    def queued(self) -> int:
        """Records submitted and not yet committed (or given up)."""
        return self.submitted - self.written - self.failed - self.spilled

    # -- the request path ------------------------------------------------------

    def check_capacity(self) -> None:
        """Refuse a new request (503, before it is accepted) while the queue is full or the database
        refuses writes: an answer is recorded before it ends, so one that cannot be is not
        started."""
        if self._failing_since is not None:
            raise ApiError(
                503,
                "The control plane cannot write request records right now (database "
                "unavailable); retry shortly.",
                type="service_unavailable",
                code="database_unavailable",
                headers={"Retry-After": "2"},
            )
        if self.queued >= self.max_queue:
            raise ApiError(
                503,
                f"The control plane is behind on writing request records ({self.queued} "
                "waiting); retry shortly.",
                type="service_unavailable",
                code="records_backlog",
                headers={"Retry-After": "1"},
            )

    def submit(self, record: RequestRow) -> asyncio.Future[bool]:
        """Queue ``record`` (and its audit event) for the writer. Never blocks, never raises.

        The future says, once the writer is done with it, whether it was committed (``True``) or
        given up (``False``: refused by the database, or saved to the spill file at shutdown).
        """
        self.submitted += 1
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed and self._task is None:
            # After stop(): nobody will write it; say so with everything it holds.
            self.failed += 1
            log.error("request record submitted after shutdown, not written: %s", record.fields())
            done.set_result(False)
            return done
        self._waiters[record.id] = done
        now = self.clock()
        if self._last_submit is not None:  # the mean gap between records, smoothed (see _linger)
            self._gap += _GAP_WEIGHT * ((now - self._last_submit) - self._gap)
        self._last_submit = now
        self._queue.append(record)
        self._since.append(now)
        self._wake.set()
        if len(self._queue) >= self.max_batch or self._gap > self.linger_s:
            self._hurry.set()
        return done

    async def commit(self, record: RequestRow, timeout: float | None = None) -> bool:
        """Submit ``record`` and wait until it is committed; ``False`` if it was given up or is
        still queued after ``timeout`` (it stays queued then: the database is down or far behind).
        """
        return await self.wait(self.submit(record), timeout)

    async def wait(self, done: asyncio.Future[bool], timeout: float | None = None) -> bool:
        """Wait for a future :meth:`submit` returned, at most ``timeout`` seconds."""
        if done.done():
            return done.result()
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                # Shielded: a waiter that times out or is cancelled leaves the record queued as it
                # is.
                return await asyncio.shield(done)
        except TimeoutError:
            self.late += 1
            log.warning(
                "a request record is still not committed after %.1fs (database down or behind); "
                "its response completes without it (it stays queued and is written when the "
                "database takes it)",
                time.monotonic() - started,
            )
            return False

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every record submitted before this call is committed (or given up)."""
        target = self.submitted
        self._flushing += 1
        self._hurry.set()
        try:
            async with asyncio.timeout(timeout), self._committed:
                await self._committed.wait_for(
                    lambda: self.written + self.failed + self.spilled >= target
                )
        finally:
            self._flushing -= 1

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._sqlite = SqliteWriterConnection.for_url(self.db.url)
        await self._replay()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="record-writer")

    async def stop(self) -> None:
        """Drain the queue (up to ``drain_s``), then stop the writer."""
        self._closed = True
        self._wake.set()
        self._hurry.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.drain_s)
        except TimeoutError:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
        if self._queue and self.spill_path is not None:
            try:
                self.spilled += spill(self.spill_path, [r.fields() for r in self._queue])
                self._resolve([r.id for r in self._queue], False)
                log.error(
                    "shutting down with %d request records not written (database unavailable for "
                    "%gs); saved to %s, written at the next start",
                    len(self._queue),
                    self.drain_s,
                    self.spill_path,
                )
                self._queue.clear()
            except OSError as exc:
                log.error(
                    "could not save unwritten request records to %s: %s", self.spill_path, exc
                )
        if self._queue:
            log.error(
                "shutting down with %d request records not written (database unavailable for %gs):",
                len(self._queue),
                self.drain_s,
            )
            while self._queue:
                self.failed += 1
                record = self._queue.popleft()
                self._resolve([record.id], False)
                log.error("request record not written: %s", record.fields())
        self._since.clear()
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        async with self._committed:  # flush() waiters: nothing more will be written
            self._committed.notify_all()

    async def _replay(self) -> None:
        """Queue the records the last shutdown saved, skipping those the database already has."""
        path = self.spill_path
        if path is None or not path.exists():
            return
        rows = load_spilled(path)
        columns = set(RequestRow.__dataclass_fields__)
        try:
            async with self.db.session() as session:
                done: set[str] = set()
                for i in range(0, len(rows), 500):
                    done |= await committed_ids(session, [r["id"] for r in rows[i : i + 500]])
        except Exception as exc:  # noqa: BLE001 - the file stays for the next start
            log.error(
                "could not replay the request records in %s yet (%s); they stay there", path, exc
            )
            return
        records = [
            RequestRow(**{k: v for k, v in row.items() if k in columns})
            for row in rows
            if row["id"] not in done
        ]
        if not records:
            path.unlink(missing_ok=True)
            return
        log.warning(
            "writing %d request records saved at the last shutdown (%s)", len(records), path
        )
        self._replaying = {r.id for r in records}
        self.submitted += len(records)
        self._queue.extendleft(reversed(records))  # older than anything submitted from now on
        self._since.extendleft([0.0] * len(records))  # long overdue: no lingering for them
        self._wake.set()

    # -- the writer task -------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._linger()
            batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
            try:
                await self._write_until_done(batch)
            except Exception:  # a bug here must not stop the writer: the batch stays queued
                log.exception("request record writer failed; retrying")
                await asyncio.sleep(self.retry_max_s)
                continue
            for _ in batch:
                self._queue.popleft()
                self._since.popleft()
            async with self._committed:
                self._committed.notify_all()

    async def _linger(self) -> None:
        """Give the batch until ``linger_s`` after its oldest record to fill up (see the module's
        doc).

        Only while records come often enough for another to join: when they come more than
        ``linger_s`` apart, waiting saves no transaction and only delays the answers waiting on it.
        Records that came while the previous batch committed are already here: no wait for them.
        """
        while len(self._queue) < self.max_batch and not (self._closed or self._flushing):
            if self._gap > self.linger_s:
                return
            left = self._since[0] + self.linger_s - self.clock()
            if left <= 0:
                return
            self._hurry.clear()
            try:
                async with asyncio.timeout(left):
                    await self._hurry.wait()
            except TimeoutError:
                return

    async def _write_until_done(self, batch: list[RequestRow]) -> None:
        """Commit ``batch``; retry what is transient, split out what is refused for good."""
        try:
            await self._write_or_retry(batch)
        finally:
            self._failing_since = (
                None  # written, given up or stopped: admission need not refuse for it
            )

    async def _write_or_retry(self, batch: list[RequestRow]) -> None:
        delay = self.retry_initial_s
        first_failure: float | None = None
        while True:
            try:
                if (
                    first_failure is not None
                ):  # a commit whose answer was lost must not be written twice
                    batch = await self._not_yet_committed(batch)
                    if not batch:
                        return
                await self._write(batch)
                if first_failure is not None:
                    log.warning(
                        "request records written again after %.1fs of database errors",
                        time.monotonic() - first_failure,
                    )
                return
            except Exception as exc:  # noqa: BLE001 - every failure is retried or reported, never lost
                if not _transient(exc):
                    await self._refused(batch, exc)
                    return
                if first_failure is None:
                    first_failure = self._failing_since = time.monotonic()
                    log.warning(
                        "could not write %d request records yet (%s: %s); retrying with backoff",
                        len(batch),
                        type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "",
                    )
                self.retries += 1
                await asyncio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self.retry_max_s)

    async def _refused(self, batch: list[RequestRow], exc: Exception) -> None:
        """The database refused the batch for good: find the culprit(s), write the rest."""
        if len(batch) > 1:
            for record in batch:
                await self._write_until_done([record])
            return
        self.failed += 1
        self._resolve([batch[0].id], False)
        log.error(
            "request record refused by the database (%s: %s), not written: %s",
            type(exc).__name__,
            exc,
            batch[0].fields(),
        )

    async def _write(self, batch: list[RequestRow]) -> None:
        if self._sqlite is not None:
            await self._sqlite.write(batch)
        else:
            async with self.db.session() as session:
                await session.run_sync(
                    _write_rows, batch
                )  # one greenlet switch for the batch's statements
                await session.commit()
        self.batches += 1
        self._done([r.id for r in batch])

    async def _not_yet_committed(self, batch: list[RequestRow]) -> list[RequestRow]:
        async with self.db.session() as session:
            done = await committed_ids(session, [r.id for r in batch])
        if done:
            self._done(sorted(done))
        return [r for r in batch if r.id not in done]

    def _resolve(self, ids: list[str], committed: bool) -> None:
        for id_ in ids:
            done = self._waiters.pop(id_, None)
            if done is not None and not done.done():
                done.set_result(committed)

    def _done(self, ids: list[str]) -> None:
        self.written += len(ids)
        self._resolve(ids, True)
        if self._replaying:
            self._replaying.difference_update(ids)
            if not self._replaying and self.spill_path is not None:
                self.spill_path.unlink(missing_ok=True)
                log.warning(
                    "the request records saved at the last shutdown are written; removed %s",
                    self.spill_path,
                )
        if self.on_committed is not None:
            try:
                self.on_committed(ids)
            except Exception:  # the records are committed whatever a listener does
                log.exception("on_committed hook failed")


_GAP_WEIGHT = (
    0.2  # of the newest gap in the smoothed mean: a change of rate shows within a few records
)


def _write_rows(conn: Session | Connection, batch: list[RequestRow]) -> None:
    insert_request_records_sync(conn, batch)
    # Same transaction: a request is recorded and audited, or neither. Events last (audit/chain.py).
    record_inferences_sync(conn, batch)
