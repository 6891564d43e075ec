"""Request records and audit events through the batching writer: in order, complete, never lost,
with back-pressure instead of loss, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine, text

from outpost.control_plane.audit.checkpoints import write_checkpoint
from outpost.control_plane.audit.export import export_records, jsonl
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.db.engine import Database, sync_url
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import RequestRecord, new_id
from outpost.control_plane.db.rows import RequestRow
from outpost.control_plane.services.record_writer import RecordWriter
from outpost.control_plane.store.tenants import get_or_create_tenant
from outpost.sdk.audit import verify_export
from tests.request_path.conftest import MODEL, PathStack

BACKENDS = pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)


# --- helpers ------------------------------------------------------------------------------------


@contextmanager
def database_held(url: str) -> Iterator[psycopg.Connection | None]:
    """Writers wait while this is open: SQLite's write lock; on PostgreSQL the audit chain's
    head row."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield None
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("SELECT * FROM audit_head WHERE id = 1 FOR UPDATE")
        try:
            yield conn
        finally:
            conn.rollback()


def rows(url: str, sql: str, **params: object) -> list[dict]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


def records_of(stack: PathStack, ids: list[str]) -> set[str]:
    found = rows(stack.database_url, "SELECT id FROM request_records")
    return {r["id"] for r in found} & set(ids)


def inference_events(url: str) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for r in rows(url, "SELECT seq, data FROM audit_events WHERE type = 'inference' ORDER BY seq"):
        data = r["data"] if isinstance(r["data"], dict) else json.loads(r["data"])
        seen.setdefault(data["request_id"], []).append(r["seq"])
    return seen


async def _chats(
    stack: PathStack, secret: str, n: int, *, stream: bool = False
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n)) as client:

        async def one(i: int) -> httpx.Response:
            return await client.post(
                f"{stack.cp.url}/v1/chat/completions",
                headers=stack.headers(secret),
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"n{i}"}],
                    "max_tokens": 3,
                    "stream": stream,
                },
            )

        return await asyncio.gather(*(one(i) for i in range(n)))


def chats(stack: PathStack, secret: str, n: int, *, stream: bool = False) -> list[httpx.Response]:
    return asyncio.run(_chats(stack, secret, n, stream=stream))


def verify_chain(stack: PathStack) -> list[dict]:
    """Sign the tip, export the whole log and verify it offline with the public key."""
    signer = AuditSigner(stack.cp.settings.state_dir / "audit-key.json")

    async def export() -> list[str]:
        db = Database(stack.database_url)
        try:
            async with db.session() as session:
                await write_checkpoint(session, signer)
                await session.commit()
            async with db.session() as session:
                return [jsonl(r).rstrip("\n") async for r in export_records(session)]
        finally:
            await db.dispose()

    lines = asyncio.run(export())
    result = verify_export(lines, [signer.current().public_key])
    assert result.ok and result.unsigned_tail == 0, result.reason
    return [json.loads(line)["event"] for line in lines if json.loads(line)["kind"] == "event"]


# --- a real control plane ------------------------------------------------------------------------


def test_concurrent_requests_are_batched_in_order_and_the_chain_verifies(
    path_stack: PathStack,
) -> None:
    _, secret = path_stack.key("batched")
    _, admin = path_stack.key("batch-admin", admin=True)
    writer = path_stack.cp.state.records
    batches = writer.batches

    async def traffic() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with httpx.AsyncClient(timeout=120) as client:
            admin_actions = [
                client.post(
                    f"{path_stack.cp.url}/api/keys",
                    headers=path_stack.headers(admin),
                    json={"name": f"during-{i}"},
                )
                for i in range(4)
            ]
            return await asyncio.gather(
                _chats(path_stack, secret, 40), asyncio.gather(*admin_actions)
            )

    # Held while the requests run, so that their records queue up and go out in a batch or two.
    with database_held(path_stack.database_url):
        done: list = []
        worker = threading.Thread(target=lambda: done.append(asyncio.run(traffic())))
        worker.start()
        deadline = time.monotonic() + 60
        while writer.queued < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.queued >= 40, "all 40 requests were answered with their records still queued"
    worker.join(120)
    responses, created = done[0]
    assert all(r.status_code == 200 for r in responses) and all(
        r.status_code == 201 for r in created
    )
    path_stack.cp.flush()

    ids = [r.headers["x-request-id"] for r in responses]
    assert records_of(path_stack, ids) == set(ids)
    events = inference_events(path_stack.database_url)
    assert all(len(events[i]) == 1 for i in ids), "every request audited exactly once"
    assert writer.batches - batches <= 3, f"{writer.batches - batches} transactions for 40 records"
    chain = verify_chain(path_stack)
    seqs = [e["seq"] for e in chain]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one unbroken chain"
    assert (
        sum(
            e["type"] == "admin.api_key.create"
            and e["data"]["details"]["name"].startswith("during-")
            for e in chain
        )
        == 4
    )


def _in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    return worker, out


def _until(predicate, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_every_accepted_request_is_recorded_after_the_database_comes_back(
    path_stack: PathStack,
) -> None:
    """The database stops taking writes for a while (and, on PostgreSQL, drops every connection):
    the answers wait for their records, and end once the database has taken them."""
    _, secret = path_stack.key("outage")
    writer = path_stack.cp.state.records
    retries, late = writer.retries, writer.late
    with database_held(path_stack.database_url) as pg:
        worker, out = _in_thread(
            lambda: chats(path_stack, secret, 20, stream=True) + chats(path_stack, secret, 10)
        )
        _until(lambda: writer.queued >= 20, 30, "the streamed requests' records queued")
        if pg is not None:
            time.sleep(
                0.5
            )  # the writer is waiting on the head lock: cut it off, and every other session
            killed = pg.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            assert killed is not None and killed[0] >= 1
        time.sleep(2.0)
        assert writer.queued >= 20, "nothing is written while the database is held"
        assert not out, "no answer ends before its record is committed"
    worker.join(60)
    responses = out[0]
    assert all(r.status_code == 200 for r in responses), [
        r.text for r in responses if r.status_code != 200
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert records_of(path_stack, ids) == set(ids), (
        "committed before the answers ended: no flush needed"
    )
    assert writer.late == late
    events = inference_events(path_stack.database_url)
    assert all(len(events[i]) == 1 for i in ids)
    if path_stack.backend == "postgres":
        assert writer.retries > retries, "the cut connection was retried"
    verify_chain(path_stack)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "unstreamed"])
def test_an_answer_ends_only_once_its_record_and_audit_event_are_committed(
    path_stack: PathStack, stream: bool
) -> None:
    """Durable before done (issue 20): a crash right after the client's `[DONE]` loses nothing."""
    _, secret = path_stack.key(f"durable-{stream}")
    seen: list[str] = []  # what the client has read so far

    def one() -> tuple[str, float]:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": stream,
        }
        with httpx.stream(
            "POST",
            f"{path_stack.cp.url}/v1/chat/completions",
            json=body,
            timeout=60,
            headers=path_stack.headers(secret),
        ) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                seen.append(line)  # noqa: PERF402 - read live by the test while the stream runs
            return resp.headers["x-request-id"], time.monotonic()

    with database_held(path_stack.database_url):
        worker, out = _in_thread(one)
        time.sleep(1.5)
        assert not out, "the answer ended while its record could not be committed"
        if stream:
            assert any(line.startswith("data: {") for line in seen), (
                "the tokens themselves are not held back"
            )
            assert "data: [DONE]" not in seen
        released = time.monotonic()
    worker.join(30)
    rid, ended = out[0]
    assert ended > released
    if stream:
        assert seen[-2:] == ["data: [DONE]", ""] or seen[-1] == "data: [DONE]", seen[-3:]
    # Read at once, without flush(): the record and its event were committed before the end.
    assert records_of(path_stack, [rid]) == {rid}
    assert len(inference_events(path_stack.database_url)[rid]) == 1


def test_an_answer_whose_record_cannot_be_committed_in_time_ends_and_its_record_follows(
    path_stack: PathStack,
) -> None:
    """The database does not answer for ``records_commit_wait_s``: the client still gets its whole
    answer (``[DONE]``), the record stays queued and is written once the database is back."""
    _, secret = path_stack.key("late")
    settings, writer = path_stack.cp.settings, path_stack.cp.state.records
    wait_s, late = settings.records_commit_wait_s, writer.late
    settings.records_commit_wait_s = 0.5
    try:
        with database_held(path_stack.database_url):
            [streamed] = chats(path_stack, secret, 1, stream=True)
            [plain] = chats(path_stack, secret, 1)
            assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
            assert plain.status_code == 200 and plain.json()["choices"]
            assert writer.late == late + 2
            ids = [streamed.headers["x-request-id"], plain.headers["x-request-id"]]
            assert records_of(path_stack, ids) == set(), "not committed: the database is held"
    finally:
        settings.records_commit_wait_s = wait_s
    path_stack.cp.flush()
    assert records_of(path_stack, ids) == set(ids)
    assert all(len(inference_events(path_stack.database_url)[i]) == 1 for i in ids)


def test_a_full_record_queue_refuses_new_requests_before_accepting_them(
    path_stack: PathStack,
) -> None:
    key_id, secret = path_stack.key("backpressure")
    writer = path_stack.cp.state.records
    limit = writer.max_queue
    try:
        with database_held(path_stack.database_url):
            writer.max_queue = writer.queued + 5
            worker, out = _in_thread(lambda: chats(path_stack, secret, 5))
            _until(lambda: writer.queued >= writer.max_queue, 30, "five records queued")
            refused = chats(path_stack, secret, 1)[0]
            assert refused.status_code == 503, refused.text
            err = refused.json()["error"]
            assert err["code"] == "records_backlog" and err["type"] == "service_unavailable"
            assert refused.headers["retry-after"] == "1"
    finally:
        writer.max_queue = limit
    worker.join(60)
    accepted = out[0]
    assert all(r.status_code == 200 for r in accepted)
    ids = [r.headers["x-request-id"] for r in accepted]
    assert records_of(path_stack, ids) == set(ids)
    mine = rows(
        path_stack.database_url, "SELECT id FROM request_records WHERE api_key_id = :k", k=key_id
    )
    assert len(mine) == 5, "the refused request was never accepted, so it has no record"


# --- the writer on its own, against a real database -----------------------------------------------


async def _tenant(db: Database) -> str:
    async with db.session() as session:
        t = await get_or_create_tenant(session, "writer")
        await session.commit()
        return t.id


def _record(tenant_id: str) -> RequestRow:
    return RequestRow(
        id=new_id("req"),
        tenant_id=tenant_id,
        api_key_id=None,
        model="m",
        endpoint="/v1/chat/completions",
        status="ok",
        http_status=200,
    )


@BACKENDS
async def test_stop_drains_what_is_queued(fresh_database_url: str) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db, max_batch=8, drain_s=60)
        await writer.start()
        records = [_record(tenant) for _ in range(30)]
        with database_held(fresh_database_url):
            for r in records:
                writer.submit(r)
            stopping = asyncio.get_running_loop().create_task(writer.stop())
            await asyncio.sleep(1.0)
            assert not stopping.done(), "stop() waits for the queue"
        await stopping
        assert writer.written == 30 and writer.failed == 0 and writer.batches >= 4
        assert {r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")} == {
            r.id for r in records
        }
        order = [
            json.loads(e["data"])["request_id"]
            if isinstance(e["data"], str)
            else e["data"]["request_id"]
            for e in rows(
                fresh_database_url,
                "SELECT data FROM audit_events WHERE type = 'inference' ORDER BY seq",
            )
        ]
        assert order == [r.id for r in records], "audit events in submission order"
    finally:
        await db.dispose()


async def _written(writer: RecordWriter, n: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while writer.written < n:
        assert time.monotonic() < deadline, f"{writer.written} of {n} written after {within_s}s"
        await asyncio.sleep(0.02)


@BACKENDS
async def test_commit_waits_until_the_record_is_committed_and_a_timed_out_wait_leaves_it_queued(
    fresh_database_url: str,
) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db, linger_s=0.01)
        await writer.start()
        first = _record(tenant)
        assert await writer.commit(first, timeout=10) is True
        assert {r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")} == {
            first.id
        }

        second = _record(tenant)
        with database_held(fresh_database_url):
            assert await writer.commit(second, timeout=0.3) is False
            assert writer.late == 1 and writer.queued == 1, (
                "still queued: written when the database is back"
            )
        await writer.flush(30)
        assert second.id in {
            r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")
        }
        await writer.stop()
        assert await writer.commit(_record(tenant), timeout=1) is False, (
            "after stop(): never written"
        )
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    "fresh_database_url", ["postgres"], indirect=True
)  # connections refused: PostgreSQL
async def test_while_the_database_refuses_writes_new_requests_are_refused(
    fresh_database_url: str,
) -> None:
    """An answer must be recorded before it ends: while records cannot be written, none is
    started."""
    from outpost.control_plane.errors import ApiError
    from tests.api.test_database_outage import _allow_connections

    upgrade_to_head(fresh_database_url)
    name = fresh_database_url.rsplit("/", 1)[1]
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db, retry_max_s=0.2)
        await writer.start()
        writer.check_capacity()
        _allow_connections(name, False)
        try:
            pending = writer.submit(_record(tenant))
            deadline = time.monotonic() + 30
            while writer.retries == 0:
                assert time.monotonic() < deadline, "the writer never saw the outage"
                await asyncio.sleep(0.05)
            with pytest.raises(ApiError) as refused:
                writer.check_capacity()
            assert refused.value.status == 503 and refused.value.code == "database_unavailable"
        finally:
            _allow_connections(name, True)
        assert await writer.wait(pending, 30) is True
        writer.check_capacity()  # written again: requests are accepted again
        await writer.stop()
    finally:
        await db.dispose()


@BACKENDS
async def test_a_batch_lingers_for_more_records_until_full_flushed_or_stopped(
    fresh_database_url: str,
) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        # A linger far longer than every wait below: nothing here is written by its clock.
        writer = RecordWriter(db, max_batch=3, linger_s=60)
        await writer.start()
        writer.submit(_record(tenant))
        await asyncio.sleep(0.3)
        assert writer.written == 0, "one record waits for others to share its transaction"
        writer.submit(_record(tenant))
        writer.submit(_record(tenant))  # the batch is full: written without waiting
        await _written(writer, 3, within_s=10)
        assert writer.batches == 1

        writer.submit(_record(tenant))
        writer.submit(_record(tenant))
        await writer.flush(10)  # flush() does not wait for the linger either
        assert writer.written == 5 and writer.batches == 2

        last = _record(tenant)
        writer.submit(last)
        await asyncio.wait_for(writer.stop(), 10)  # nor does shutdown
        assert writer.written == 6 and writer.batches == 3
        assert last.id in {
            r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")
        }
    finally:
        await db.dispose()


@BACKENDS
async def test_records_further_apart_than_the_linger_are_written_without_waiting(
    fresh_database_url: str,
) -> None:
    """Lingering pays only when another record comes meanwhile; the answers wait on it otherwise."""
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        now = [0.0]
        # A linger far longer than the test: only the (injected) clock's spacing can skip it.
        writer = RecordWriter(db, linger_s=600, clock=lambda: now[0])
        await writer.start()
        writer.submit(_record(tenant))
        await asyncio.sleep(0.3)
        assert writer.written == 0, "at first (spacing unknown) a record lingers"
        for i in range(12):  # records an hour apart
            now[0] += 3600
            assert await writer.commit(_record(tenant), timeout=30), f"record {i} was not written"
        assert writer.written == 13 and writer.late == 0
        await writer.stop()
    finally:
        await db.dispose()


@BACKENDS
async def test_records_submitted_within_the_linger_share_one_transaction(
    fresh_database_url: str,
) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db, linger_s=0.5)
        await writer.start()
        for _ in range(5):
            writer.submit(_record(tenant))
            await asyncio.sleep(0.02)
        await _written(writer, 5, within_s=10)
        assert writer.batches == 1
        await writer.stop()
    finally:
        await db.dispose()


@BACKENDS
async def test_a_record_the_database_refuses_is_logged_and_the_rest_written(
    fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_to_head(fresh_database_url)
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db)
        await writer.start()
        good = [_record(tenant), _record(tenant)]
        bad = _record(
            "ten_missing"
        )  # no such tenant: a foreign key violation, not a transient error
        with database_held(fresh_database_url):  # so all three go out in one batch
            for r in (good[0], bad, good[1]):
                writer.submit(r)
        with caplog.at_level(logging.ERROR, logger="outpost.records"):
            await writer.flush(30)
        await writer.stop()
        assert writer.written == 2 and writer.failed == 1
        assert {r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")} == {
            g.id for g in good
        }
        assert any(bad.id in rec.getMessage() for rec in caplog.records), "never dropped silently"
    finally:
        await db.dispose()


@BACKENDS
async def test_records_unwritten_at_shutdown_are_saved_and_written_once_at_the_next_start(
    fresh_database_url: str, tmp_path
) -> None:
    upgrade_to_head(fresh_database_url)
    spill_path = tmp_path / "unwritten-records.jsonl"
    db = Database(fresh_database_url)
    try:
        tenant = await _tenant(db)
        writer = RecordWriter(db, max_batch=4, drain_s=0.5, retry_max_s=0.1, spill_path=spill_path)
        await writer.start()
        records = [_record(tenant) for _ in range(10)]
        with database_held(fresh_database_url):  # the database takes nothing until after the drain
            for r in records:
                writer.submit(r)
            await writer.stop()
        assert (
            writer.written == 0
            and writer.failed == 0
            and writer.spilled == 10
            and writer.queued == 0
        )
        assert rows(fresh_database_url, "SELECT id FROM request_records") == []
        assert spill_path.stat().st_mode & 0o777 == 0o600
        # A torn line (a crash while appending) and one record spilled twice: skipped, written once.
        with spill_path.open("a") as f:
            f.write(spill_path.read_text().splitlines()[0] + "\n" + '{"id": "req_torn", "tenant')

        again = RecordWriter(db, spill_path=spill_path)
        await again.start()
        await again.flush(30)
        await again.stop()
        assert again.written == 10 and again.failed == 0
        assert sorted(
            r["id"] for r in rows(fresh_database_url, "SELECT id FROM request_records")
        ) == sorted(r.id for r in records)
        assert sorted(inference_events(fresh_database_url)) == sorted(r.id for r in records)
        assert all(len(seqs) == 1 for seqs in inference_events(fresh_database_url).values())
        assert not spill_path.exists(), "the file goes once every saved record is written"

        # Nothing to replay: a start without the file is a no-op.
        third = RecordWriter(db, spill_path=spill_path)
        await third.start()
        await third.stop()
        assert third.submitted == 0
    finally:
        await db.dispose()


def test_a_request_row_has_the_columns_of_a_request_record() -> None:
    """The request path builds plain rows (db/rows.py) for the writer's Core inserts: a column
    added to the table and not to the row would be written as its default, silently."""
    columns = {c.key for c in RequestRecord.__table__.columns}
    assert {f.name for f in dataclasses.fields(RequestRow)} == columns
