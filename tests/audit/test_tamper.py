"""Any single-row change to an export, a rewritten tail, a hidden or truncated event: caught and
located."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from outpost.control_plane.audit.chain import event_object
from outpost.control_plane.audit.checkpoints import Checkpointer, write_checkpoint
from outpost.control_plane.audit.guard import ChainGuard, ChainRefused
from outpost.control_plane.audit.keys import AuditSigner, generate_key
from outpost.control_plane.audit.prune import prune_before
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import AuditCheckpoint, AuditEvent, AuditHead
from outpost.sdk.audit import chain_hash, checkpoint_message, event_digest, verify_export
from outpost.sdk.identity import b64u_encode
from tests.audit.conftest import BACKENDS, add_admin_events, checkpoint, export_lines, kinds


@pytest.fixture
async def chain(db: Database, signer: AuditSigner) -> list[str]:
    """12 events over two tenants, checkpoints at seq 4, 8 and 12."""
    for start in (0, 4, 8):
        await add_admin_events(db, 4, start=start)
        await checkpoint(db, signer)
    return await export_lines(db)


def pinned(signer: AuditSigner) -> list[str]:
    return [signer.current().public_key]


def event_indexes(lines: list[str]) -> list[int]:
    return [i for i, k in enumerate(kinds(lines)) if k == "event"]


def rehash_from(lines: list[str], start: int) -> list[str]:
    """What a forger does: recompute every hash from line ``start`` on, leaving checkpoints
    alone."""
    out, prev = list(lines), None
    for i, line in enumerate(out):
        rec = json.loads(line)
        if rec["kind"] != "event":
            continue
        if i >= start:
            rec["hash"] = chain_hash(prev, event_digest(rec["event"]))
            out[i] = json.dumps(rec)
        prev = rec["hash"]
    return out


def test_clean_chain_verifies(chain: list[str], signer: AuditSigner) -> None:
    result = verify_export(chain, pinned(signer))
    assert result.ok, result.reason
    assert (result.events, result.checkpoints, result.last_signed_seq, result.unsigned_tail) == (
        12,
        3,
        12,
        0,
    )


def test_editing_any_event_is_detected_at_its_line(chain: list[str], signer: AuditSigner) -> None:
    for i in event_indexes(chain):
        rec = json.loads(chain[i])
        rec["event"]["data"]["details"]["i"] += 1000
        tampered = [*chain[:i], json.dumps(rec), *chain[i + 1 :]]
        result = verify_export(tampered, pinned(signer))
        assert not result.ok and result.index == i and "hash mismatch" in result.reason


def test_deleting_any_event_is_detected_at_its_line(chain: list[str], signer: AuditSigner) -> None:
    for i in event_indexes(chain):
        result = verify_export([*chain[:i], *chain[i + 1 :]], pinned(signer))
        assert not result.ok and result.index == i
        if kinds(chain)[i + 1] == "checkpoint":  # it now vouches for a seq the chain never reached
            assert "not in the chain" in result.reason
        else:
            assert "expected seq" in result.reason


def test_inserting_a_row_anywhere_is_detected_at_its_line(
    chain: list[str], signer: AuditSigner
) -> None:
    events = event_indexes(chain)
    for i in events:
        replayed = chain[events[0]]  # a genuine event, replayed elsewhere
        tampered = [*chain[:i], replayed, *chain[i:]]
        result = verify_export(tampered, pinned(signer))
        if i == events[0]:
            # The duplicate sits in the right place; the original after it is out of sequence.
            assert not result.ok and result.index == i + 1
        else:
            assert not result.ok and result.index == i and "expected seq" in result.reason


def test_inserting_a_forged_event_is_detected(chain: list[str], signer: AuditSigner) -> None:
    i = event_indexes(chain)[5]
    prev = json.loads(chain[i])
    forged = json.loads(chain[i])
    forged["event"]["data"]["target"] = "key_forged"
    tampered = [*chain[:i], json.dumps(forged), *chain[i:]]
    result = verify_export(tampered, pinned(signer))
    assert not result.ok and result.index == i and result.seq == prev["event"]["seq"]


def test_reordering_any_two_adjacent_events_is_detected(
    chain: list[str], signer: AuditSigner
) -> None:
    events = event_indexes(chain)
    for a, b in itertools.pairwise(events):
        if b != a + 1:
            continue  # a checkpoint sits between them
        tampered = list(chain)
        tampered[a], tampered[b] = tampered[b], tampered[a]
        result = verify_export(tampered, pinned(signer))
        assert not result.ok and result.index == a and "expected seq" in result.reason


def test_rewriting_the_whole_tail_is_caught_by_the_checkpoint(
    chain: list[str], signer: AuditSigner
) -> None:
    # Change seq 2 and recompute every later hash: the chain is self-consistent
    # again, but the checkpoint signed at seq 4 no longer matches it.
    i = event_indexes(chain)[1]
    rec = json.loads(chain[i])
    rec["event"]["data"]["target"] = "key_rewritten"
    forged = rehash_from([*chain[:i], json.dumps(rec), *chain[i + 1 :]], i)
    result = verify_export(forged, pinned(signer))
    first_checkpoint = kinds(chain).index("checkpoint")
    assert not result.ok and result.index == first_checkpoint and "rewritten" in result.reason


def test_resigning_a_rewritten_tail_needs_the_key(chain: list[str], signer: AuditSigner) -> None:
    i = event_indexes(chain)[1]
    rec = json.loads(chain[i])
    rec["event"]["data"]["target"] = "key_rewritten"
    forged = rehash_from([*chain[:i], json.dumps(rec), *chain[i + 1 :]], i)
    mine = generate_key()  # the forger's own key, also offered as a "key" line
    hashes = {}
    for n, line in enumerate(forged):
        r = json.loads(line)
        if r["kind"] == "event":
            hashes[r["event"]["seq"]] = r["hash"]
        elif r["kind"] == "checkpoint":
            r.update(hash=hashes[r["seq"]], key_id=mine.key_id)
            r["signature"] = mine.sign(
                checkpoint_message(r["seq"], r["hash"], r["ts"], mine.key_id)
            )
            forged[n] = json.dumps(r)
        elif r["kind"] == "key":
            r.update(key_id=mine.key_id, public_key=mine.public_key)
            forged[n] = json.dumps(r)
    result = verify_export(forged, pinned(signer))
    assert not result.ok and "not trusted" in result.reason


def test_truncation_after_the_last_checkpoint_is_reported(
    chain: list[str], signer: AuditSigner
) -> None:
    # Drop the last checkpoint: events 9..12 are still chained but unsigned.
    result = verify_export(chain[:-1], pinned(signer))
    assert result.ok and result.unsigned_tail == 4 and result.last_signed_seq == 8


def test_a_rotation_record_not_signed_by_both_keys_is_refused(
    chain: list[str], signer: AuditSigner
) -> None:
    mine = generate_key()
    forged_key = {
        "kind": "key",
        "key_id": mine.key_id,
        "public_key": mine.public_key,
        "created_at": "t",
        "rotation": {
            "prev_key_id": signer.current().key_id,
            "prev_public_key": signer.current().public_key,
            "ts": "t",
            "prev_signature": b64u_encode(bytes(64)),
            "signature": b64u_encode(bytes(64)),
        },
    }
    result = verify_export([chain[0], json.dumps(forged_key), *chain[1:]], pinned(signer))
    assert not result.ok and result.index == 1 and "both keys" in result.reason


@BACKENDS
async def test_tampering_with_database_rows_is_detected(
    db: Database, signer: AuditSigner, tmp_path: Path
) -> None:
    await add_admin_events(db, 10)
    await checkpoint(db, signer)
    key = pinned(signer)
    assert verify_export(await export_lines(db), key).ok

    async def run(sql: str) -> list[str]:
        async with db.session() as session:
            await session.execute(text(sql))
            await session.commit()
        return await export_lines(db)

    def line_of(lines: list[str], seq: int) -> int:
        return next(
            i for i, line in enumerate(lines) if json.loads(line).get("event", {}).get("seq") == seq
        )

    # Edit: the actor of seq 3.
    lines = await run("UPDATE audit_events SET actor = 'operator:mallory' WHERE seq = 3")
    result = verify_export(lines, key)
    assert not result.ok and result.seq == 3 and result.index == line_of(lines, 3)
    await run("UPDATE audit_events SET actor = 'operator:test' WHERE seq = 3")
    assert verify_export(await export_lines(db), key).ok

    # Reorder: swap the sequence numbers of rows 5 and 6.
    lines = await run("UPDATE audit_events SET seq = -seq WHERE seq IN (5, 6)")
    lines = await run(
        "UPDATE audit_events SET seq = CASE seq WHEN -5 THEN 6 ELSE 5 END WHERE seq < 0"
    )
    result = verify_export(lines, key)
    assert not result.ok and result.seq == 5 and result.index == line_of(lines, 5)
    await run("UPDATE audit_events SET seq = -seq WHERE seq IN (5, 6)")
    await run("UPDATE audit_events SET seq = CASE seq WHEN -5 THEN 6 ELSE 5 END WHERE seq < 0")
    assert verify_export(await export_lines(db), key).ok

    # Delete: row 7 disappears; the line where it was now holds seq 8.
    before = await export_lines(db)
    lines = await run("DELETE FROM audit_events WHERE seq = 7")
    result = verify_export(lines, key)
    assert (
        not result.ok and result.index == line_of(before, 7) and "expected seq 7" in result.reason
    )


# -- completeness (issue 20): the four ways to make events vanish without a trace
# -----------------------------


def _redact(line: str) -> str:
    """What a control plane hiding a tenant's own event would write in its tenant-scoped export."""
    rec = json.loads(line)
    return json.dumps(
        {
            "kind": "redacted",
            "seq": rec["event"]["seq"],
            "digest": event_digest(rec["event"]),
            "hash": rec["hash"],
        }
    )


async def test_a_tenants_event_shown_as_redacted_is_a_gap_in_its_own_numbering(
    db: Database, signer: AuditSigner
) -> None:
    await add_admin_events(db, 12, tenants=("ten_a", "ten_b", "ten_b"))
    await checkpoint(db, signer)
    lines = await export_lines(db, tenant_id="ten_a")
    assert verify_export(lines, pinned(signer)).ok
    own = [i for i in event_indexes(lines) if json.loads(lines[i])["event"]["tenant"] == "ten_a"]
    assert [json.loads(lines[i])["event"]["tenant_seq"] for i in own] == [1, 2, 3, 4]
    for n, i in enumerate(own[:-1]):  # the chain still verifies: only tenant_seq tells
        tampered = [*lines[:i], _redact(lines[i]), *lines[i + 1 :]]
        result = verify_export(tampered, pinned(signer))
        assert not result.ok and result.index == own[n + 1], result.reason
        assert f"expected tenant_seq {n + 1}, found {n + 2}" in result.reason
    # Stripping tenant_seq, or renumbering, changes the event's digest: the chain breaks there.
    rec = json.loads(lines[own[1]])
    rec["event"]["tenant_seq"] = 1
    result = verify_export(
        [*lines[: own[1]], json.dumps(rec), *lines[own[1] + 1 :]], pinned(signer)
    )
    assert not result.ok and result.index == own[1] and "hash mismatch" in result.reason


@BACKENDS
async def test_deleting_a_prefix_and_moving_the_anchor_needs_an_audit_prune_event(
    db: Database, signer: AuditSigner, tmp_path: Path
) -> None:
    for start in (0, 4):
        await add_admin_events(db, 4, start=start)
        await checkpoint(db, signer)
    await add_admin_events(db, 2, start=8)
    await checkpoint(db, signer)
    async with (
        db.session() as session
    ):  # what someone with the database can do without `audit prune`
        await session.execute(text("DELETE FROM audit_events WHERE seq <= 4"))
        await session.execute(text("DELETE FROM audit_checkpoints WHERE seq < 4"))
        await session.execute(text("UPDATE audit_head SET anchor_seq = 4 WHERE id = 1"))
        await session.commit()
    for tenant in (None, "ten_a"):
        lines = await export_lines(db, tenant_id=tenant)
        result = verify_export(lines, pinned(signer))
        anchor = kinds(lines).index("anchor")
        assert not result.ok and result.index == anchor and result.seq == 4, result.reason
        assert "not announced by an audit.prune event" in result.reason
    # And the checkpointer will not sign on top of it.
    await add_admin_events(db, 1, start=10)
    with pytest.raises(ChainRefused, match="without an audit.prune event"):
        async with db.session() as session:
            await write_checkpoint(session, signer, ChainGuard())


@BACKENDS
async def test_a_real_prune_is_announced_signed_and_shown_to_every_tenant(
    db: Database, signer: AuditSigner, tmp_path: Path
) -> None:
    await add_admin_events(db, 4)
    await asyncio.sleep(0.01)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await add_admin_events(db, 2, start=4)
    await checkpoint(db, signer)
    result = await prune_before(db, signer, cutoff, tmp_path / "a.jsonl", actor="operator:test")
    assert (result.anchor_seq, result.pruned) == (4, 4)
    for tenant in (None, "ten_a", "ten_b"):
        lines = await export_lines(db, tenant_id=tenant)
        verified = verify_export(lines, pinned(signer))
        assert verified.ok and verified.unsigned_tail == 0, verified.reason  # signed with the prune
        prune = [json.loads(ln)["event"] for ln in lines if '"audit.prune"' in ln]
        assert prune and prune[0]["data"]["anchor_seq"] == 4
    # The prune event, removed from an export that keeps the anchor, is missed.
    lines = await export_lines(db, tenant_id="ten_a")
    i = next(i for i, ln in enumerate(lines) if '"audit.prune"' in ln)
    result = verify_export([*lines[:i], _redact(lines[i]), *lines[i + 1 :]], pinned(signer))
    assert not result.ok and "not announced by an audit.prune event" in result.reason


@BACKENDS
async def test_the_checkpointer_refuses_a_rewritten_unsigned_tail(
    db: Database, signer: AuditSigner, caplog: pytest.LogCaptureFixture
) -> None:
    cp = Checkpointer(db, signer, every_n=1000, every_s=3600, guard=ChainGuard())
    await add_admin_events(db, 4)
    assert (await cp.tick()).seq == 4  # the first checkpoint is due at once
    await add_admin_events(db, 4, start=4)
    assert await cp.tick() is None  # not due yet, but the checkpointer has now seen events 5..8
    assert cp.alarm is None

    # A consistent rewrite of the unsigned events 6..8, the head moved along: every hash follows.
    async with db.session() as session:
        rows = (
            await session.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq"))
        ).all()
        prev = dict(rows)[5]
        for n in (6, 7, 8):
            row = (
                await session.execute(select(AuditEvent).where(AuditEvent.seq == n))
            ).scalar_one()
            row.data = {**row.data, "target": f"forged_{n}"}
            row.hash = prev = chain_hash(prev, event_digest(event_object(row)))
        await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
        await session.commit()
    assert verify_export(await export_lines(db), pinned(signer)).ok  # offline, nothing can tell yet

    cp.every_n = 1  # due now
    with caplog.at_level(logging.ERROR, logger="outpost.audit"):
        assert await cp.tick() is None
        assert await cp.tick() is None
    assert cp.alarm and "rewritten" in cp.alarm and cp.refusals == 2
    assert sum("REFUSED" in r.message for r in caplog.records) == 1  # loud once, counted every time
    metrics = {m.name: m.samples[0].value for m in cp.collector().collect()}
    assert metrics == {"outpost_audit_checkpoint_refusals": 2, "outpost_audit_chain_alarm": 1}
    async with db.session() as session:
        assert (await session.execute(select(func.max(AuditCheckpoint.seq)))).scalar() == 4
    await cp.stop()  # the final checkpoint at shutdown refuses too
    async with db.session() as session:
        assert (await session.execute(select(func.max(AuditCheckpoint.seq)))).scalar() == 4


@BACKENDS
async def test_a_rewrite_across_the_last_checkpoint_is_refused_without_memory(
    db: Database, signer: AuditSigner
) -> None:
    await add_admin_events(db, 4)
    await checkpoint(db, signer)
    await add_admin_events(db, 2, start=4)
    async with (
        db.session() as session
    ):  # rewrite seq 2 and re-hash everything after it, head included
        prev = (
            await session.execute(select(AuditEvent.hash).where(AuditEvent.seq == 1))
        ).scalar_one()
        for n in range(2, 7):
            row = (
                await session.execute(select(AuditEvent).where(AuditEvent.seq == n))
            ).scalar_one()
            if n == 2:
                row.actor = "operator:mallory"
            row.hash = prev = chain_hash(prev, event_digest(event_object(row)))
        await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
        await session.commit()
    with pytest.raises(ChainRefused, match="checkpoint at seq 4 does not match"):
        async with (
            db.session() as session
        ):  # a fresh CLI process: it starts from the stored checkpoint
            await write_checkpoint(session, signer)


@BACKENDS
async def test_a_truncated_tail_is_caught_by_checkpoints_the_tenant_kept(
    db: Database, signer: AuditSigner
) -> None:
    for start in (0, 4, 8):
        await add_admin_events(db, 4, start=start)
        await checkpoint(db, signer)
    kept = [
        ln
        for ln in await export_lines(db, tenant_id="ten_a")
        if json.loads(ln)["kind"] == "checkpoint"
    ]
    assert [json.loads(ln)["seq"] for ln in kept] == [4, 8, 12]
    async with (
        db.session() as session
    ):  # drop the newest events with their checkpoints; the head goes back
        hash8 = (
            await session.execute(select(AuditEvent.hash).where(AuditEvent.seq == 8))
        ).scalar_one()
        await session.execute(text("DELETE FROM audit_events WHERE seq > 8"))
        await session.execute(text("DELETE FROM audit_checkpoints WHERE seq > 8"))
        await session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(seq=8, hash=hash8, checkpoint_seq=8)
        )
        await session.commit()
    lines = await export_lines(db, tenant_id="ten_a")
    assert verify_export(lines, pinned(signer)).ok  # without what the tenant kept: undetectable
    result = verify_export(lines, pinned(signer), kept)
    assert not result.ok and result.seq == 12 and result.index == len(lines), result.reason
    assert "truncated" in result.reason
    # Kept checkpoints that the shorter log still holds pass, and count as signatures.
    result = verify_export(lines, pinned(signer), kept[:2])
    assert result.ok and result.kept_checkpoints == 2 and result.last_signed_seq == 8
    # A kept checkpoint must itself be genuine.
    forged = json.loads(kept[2])
    forged["seq"] = 8
    result = verify_export(lines, pinned(signer), [json.dumps(forged)])
    assert not result.ok and "invalid signature" in result.reason
