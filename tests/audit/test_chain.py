"""Appending, checkpoints, keys, rotation, retention and tenant exports on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update

from outpost.control_plane.audit import record_admin, record_fairness_probe, record_login
from outpost.control_plane.audit.chain import Head, event_object, read_head
from outpost.control_plane.audit.checkpoints import checkpoint_if_due, is_due
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.audit.prune import prune_before
from outpost.control_plane.audit.rotation import rotate_key
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import AuditCheckpoint, AuditEvent, AuditHead, AuditTenantHead
from outpost.sdk.audit import chain_hash, event_digest, verify_export
from tests.audit.conftest import BACKENDS, add_admin_events, checkpoint, export_lines, kinds


@BACKENDS
async def test_concurrent_appends_form_one_contiguous_chain(
    db: Database, signer: AuditSigner
) -> None:
    async def one(i: int) -> None:
        async with db.session() as session:
            await record_admin(
                session,
                actor="operator:test",
                action="budget.set",
                tenant_id="ten_a",
                target=f"b{i}",
                details={"amount_usd": 1.25 * i},
            )
            await session.commit()

    await asyncio.gather(
        *(one(i) for i in range(120)), add_admin_events(db, 20, tenants=("ten_b",))
    )
    await checkpoint(db, signer)
    result = verify_export(await export_lines(db), [signer.current().public_key])
    assert result.ok, result.reason
    assert (result.first_seq, result.last_seq, result.events) == (1, 140, 140)
    async with db.session() as session:
        rows = (
            await session.execute(
                select(AuditEvent.tenant_id, AuditEvent.tenant_seq).order_by(AuditEvent.seq)
            )
        ).all()
    for tenant, n in (("ten_a", 120), ("ten_b", 20)):  # each tenant's own numbering, in chain order
        assert [ts for t, ts in rows if t == tenant] == list(range(1, n + 1))


@BACKENDS
async def test_a_rolled_back_append_leaves_no_gap(db: Database, signer: AuditSigner) -> None:
    async with db.session() as session:
        await record_login(session, success=False, email="x@example.com", reason="bad password")
        await session.rollback()
    await add_admin_events(db, 2)
    async with db.session() as session:
        seqs = list(
            (await session.execute(select(AuditEvent.seq).order_by(AuditEvent.seq))).scalars()
        )
    assert seqs == [1, 2]


async def test_detail_keys_that_carry_content_are_refused(tmp_path: Path) -> None:
    from outpost.control_plane.audit.events import _clean

    for key in ("prompt", "messages", "content", "completion", "secret", "password", "token"):
        with pytest.raises(ValueError):
            _clean({"nested": {key: "x"}})
    assert _clean({"cost": 0.00012, "at": datetime(2026, 1, 1, tzinfo=UTC)}) == {
        "cost": "0.00012",
        "at": "2026-01-01T00:00:00.000000Z",
    }


def test_checkpoint_due_after_n_events_or_t_seconds() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    ts = (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert not is_due(Head(10, "", 10, ts, 0), 5, 60, now)  # nothing new
    assert not is_due(Head(12, "", 10, ts, 0), 5, 60, now)  # 2 new, 30 s old
    assert is_due(Head(15, "", 10, ts, 0), 5, 60, now)  # N reached
    assert is_due(Head(12, "", 10, ts, 0), 5, 20, now)  # T reached
    assert is_due(Head(1, "", 0, None, 0), 5, 60, now)  # never signed


@BACKENDS
async def test_checkpoint_if_due_signs_once(db: Database, signer: AuditSigner) -> None:
    await add_admin_events(db, 3)
    for _ in range(2):
        async with db.session() as session:
            await checkpoint_if_due(session, signer, every_n=3, every_s=3600)
            await session.commit()
    async with db.session() as session:
        rows = list((await session.execute(select(AuditCheckpoint))).scalars())
        head = await read_head(session)
    assert [r.seq for r in rows] == [3] and head.checkpoint_seq == 3


def test_key_file_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit-key.json"
    first = AuditSigner(path).current()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AuditSigner(path).current().key_id == first.key_id
    assert json.loads(path.read_text())["key_id"] == first.key_id


@BACKENDS
async def test_rotation_keeps_old_checkpoints_verifiable(db: Database, signer: AuditSigner) -> None:
    await add_admin_events(db, 4)
    await checkpoint(db, signer)
    old, new = await rotate_key(db, signer, actor="operator:test")
    assert signer.current().key_id == new.key_id  # the file changed; the signer followed
    await add_admin_events(db, 4, start=4)
    await checkpoint(db, signer)
    lines = await export_lines(db)
    signers = {
        json.loads(line)["key_id"] for line in lines if json.loads(line)["kind"] == "checkpoint"
    }
    assert signers == {old.key_id, new.key_id}
    for pin in (
        old.public_key,
        new.public_key,
    ):  # either key vouches for the other via the rotation record
        result = verify_export(lines, [pin])
        assert result.ok and result.last_signed_seq == 9, result.reason
    rotation = [json.loads(line) for line in lines if '"audit.key.rotate"' in line]
    assert rotation[0]["event"]["data"] == {"prev_key_id": old.key_id, "key_id": new.key_id}


@BACKENDS
async def test_prune_archives_then_anchors_the_rest(
    db: Database, signer: AuditSigner, tmp_path: Path
) -> None:
    await add_admin_events(db, 6)
    await checkpoint(db, signer)
    await asyncio.sleep(0.01)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await add_admin_events(db, 5, start=6)
    archive = tmp_path / "archive.jsonl"
    result = await prune_before(db, signer, cutoff, archive, actor="operator:test")
    assert (result.anchor_seq, result.pruned) == (6, 6)
    pin = [signer.current().public_key]

    old = archive.read_text().splitlines()
    checked = verify_export(old, pin)
    assert checked.ok and (checked.first_seq, checked.last_seq, checked.last_signed_seq) == (
        1,
        6,
        6,
    )

    await checkpoint(db, signer)
    rest = await export_lines(db)
    assert kinds(rest)[:3] == ["header", "key", "anchor"] and json.loads(rest[2])["seq"] == 6
    checked = verify_export(rest, pin)
    assert checked.ok, checked.reason
    assert (checked.first_seq, checked.last_seq) == (7, 12)  # 11 events + the audit.prune event
    assert (
        json.loads(old[-1])["hash"] == json.loads(rest[2])["hash"]
    )  # the archive ends where the rest begins
    async with db.session() as session:
        assert (await session.execute(select(func.min(AuditEvent.seq)))).scalar_one() == 7

    # A second prune chains on: its archive starts at the first anchor.
    cutoff2 = datetime.now(UTC) + timedelta(seconds=1)
    second = await prune_before(
        db, signer, cutoff2, tmp_path / "archive2.jsonl", actor="operator:test"
    )
    archived = (tmp_path / "archive2.jsonl").read_text().splitlines()
    assert second.anchor_seq == 12 and kinds(archived)[2] == "anchor"
    assert verify_export(archived, pin).ok
    # Nothing older remains: a third prune is a no-op.
    third = await prune_before(
        db, signer, cutoff, tmp_path / "archive3.jsonl", actor="operator:test"
    )
    assert third.archive is None and not (tmp_path / "archive3.jsonl").exists()


@BACKENDS
async def test_tenant_export_redacts_other_tenants_and_still_verifies(
    db: Database, signer: AuditSigner
) -> None:
    await add_admin_events(db, 6, tenants=("ten_a", "ten_b"))
    async with db.session() as session:
        await record_fairness_probe(
            session,
            actor="key:key_b",
            tenant_id="ten_b",
            run_id="fr_secret_b",
            suite_id="default-v1",
            suite_version="1",
            suite_hash="ab" * 32,
            model="m",
            status="finished",
        )
        await session.commit()
    await checkpoint(db, signer)
    lines = await export_lines(db, tenant_id="ten_a")
    pin = [signer.current().public_key]
    result = verify_export(lines, pin)
    assert result.ok and result.events == 7 and result.redacted == 4, result.reason
    text = "\n".join(lines)
    assert "ten_b" not in text and "fr_secret_b" not in text and "key_1" not in text
    shown = [json.loads(line)["event"] for line in lines if json.loads(line)["kind"] == "event"]
    assert {e["tenant"] for e in shown} == {"ten_a"}

    # A forged digest for a redacted event breaks the chain right there.
    i = kinds(lines).index("redacted")
    rec = json.loads(lines[i])
    rec["digest"] = "0" * 64
    bad = verify_export([*lines[:i], json.dumps(rec), *lines[i + 1 :]], pin)
    assert not bad.ok and bad.index == i


@BACKENDS
async def test_events_from_before_tenant_seq_still_verify_and_numbering_starts_at_one(
    db: Database, signer: AuditSigner
) -> None:
    await add_admin_events(db, 3)
    async with (
        db.session() as session
    ):  # what rows written before migration 0005 look like: version 1
        prev = "0" * 64
        for row in (await session.execute(select(AuditEvent).order_by(AuditEvent.seq))).scalars():
            row.tenant_seq = None
            row.hash = prev = chain_hash(prev, event_digest(event_object(row)))
        await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
        await session.execute(delete(AuditTenantHead))
        await session.commit()
    await add_admin_events(db, 4)
    await checkpoint(db, signer)
    lines = await export_lines(db)
    assert verify_export(lines, [signer.current().public_key]).ok
    events = [json.loads(line)["event"] for line in lines if json.loads(line)["kind"] == "event"]
    assert [(e["v"], e.get("tenant_seq")) for e in events] == [(1, None)] * 3 + [
        (2, 1),
        (2, 1),
        (2, 2),
        (2, 2),
    ]


@BACKENDS
async def test_details_a_client_chose_never_fail_the_audited_action(
    db: Database, signer: AuditSigner
) -> None:
    # A JSON body may carry non-ASCII keys and lone surrogates (runner labels did: a 500 found by
    # schemathesis).
    async with db.session() as session:
        row = await record_admin(
            session,
            actor="operator:test",
            action="enrollment_token.create",
            tenant_id="ten_a",
            details={"labels": {"\u0082\u00fc": "\ud800x", "ok": "\u00e9"}},
        )
        await session.commit()
    assert row.data["details"]["labels"] == {"\\x82\\xfc": "?x", "ok": "\u00e9"}
    await checkpoint(db, signer)
    assert verify_export(await export_lines(db), [signer.current().public_key]).ok
