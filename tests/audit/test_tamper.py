"""Any single-row change to an export, and a rewritten tail, is caught and located."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from control_plane.audit.keys import AuditSigner, generate_key
from control_plane.db.engine import Database
from sdk.audit import chain_hash, checkpoint_message, event_digest, verify_export
from sdk.identity import b64u_encode
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
    """What a forger does: recompute every hash from line ``start`` on, leaving checkpoints alone."""
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
    assert (result.events, result.checkpoints, result.last_signed_seq, result.unsigned_tail) == (12, 3, 12, 0)


def test_editing_any_event_is_detected_at_its_line(chain: list[str], signer: AuditSigner) -> None:
    for i in event_indexes(chain):
        rec = json.loads(chain[i])
        rec["event"]["data"]["details"]["i"] += 1000
        tampered = [*chain[:i], json.dumps(rec), *chain[i + 1:]]
        result = verify_export(tampered, pinned(signer))
        assert not result.ok and result.index == i and "hash mismatch" in result.reason


def test_deleting_any_event_is_detected_at_its_line(chain: list[str], signer: AuditSigner) -> None:
    for i in event_indexes(chain):
        result = verify_export([*chain[:i], *chain[i + 1:]], pinned(signer))
        assert not result.ok and result.index == i
        if kinds(chain)[i + 1] == "checkpoint":  # it now vouches for a seq the chain never reached
            assert "not in the chain" in result.reason
        else:
            assert "expected seq" in result.reason


def test_inserting_a_row_anywhere_is_detected_at_its_line(chain: list[str], signer: AuditSigner) -> None:
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


def test_reordering_any_two_adjacent_events_is_detected(chain: list[str], signer: AuditSigner) -> None:
    events = event_indexes(chain)
    for a, b in itertools.pairwise(events):
        if b != a + 1:
            continue  # a checkpoint sits between them
        tampered = list(chain)
        tampered[a], tampered[b] = tampered[b], tampered[a]
        result = verify_export(tampered, pinned(signer))
        assert not result.ok and result.index == a and "expected seq" in result.reason


def test_rewriting_the_whole_tail_is_caught_by_the_checkpoint(chain: list[str], signer: AuditSigner) -> None:
    # Change seq 2 and recompute every later hash: the chain is self-consistent
    # again, but the checkpoint signed at seq 4 no longer matches it.
    i = event_indexes(chain)[1]
    rec = json.loads(chain[i])
    rec["event"]["data"]["target"] = "key_rewritten"
    forged = rehash_from([*chain[:i], json.dumps(rec), *chain[i + 1:]], i)
    result = verify_export(forged, pinned(signer))
    first_checkpoint = kinds(chain).index("checkpoint")
    assert not result.ok and result.index == first_checkpoint and "rewritten" in result.reason


def test_resigning_a_rewritten_tail_needs_the_key(chain: list[str], signer: AuditSigner) -> None:
    i = event_indexes(chain)[1]
    rec = json.loads(chain[i])
    rec["event"]["data"]["target"] = "key_rewritten"
    forged = rehash_from([*chain[:i], json.dumps(rec), *chain[i + 1:]], i)
    mine = generate_key()  # the forger's own key, also offered as a "key" line
    hashes = {}
    for n, line in enumerate(forged):
        r = json.loads(line)
        if r["kind"] == "event":
            hashes[r["event"]["seq"]] = r["hash"]
        elif r["kind"] == "checkpoint":
            r.update(hash=hashes[r["seq"]], key_id=mine.key_id)
            r["signature"] = mine.sign(checkpoint_message(r["seq"], r["hash"], r["ts"], mine.key_id))
            forged[n] = json.dumps(r)
        elif r["kind"] == "key":
            r.update(key_id=mine.key_id, public_key=mine.public_key)
            forged[n] = json.dumps(r)
    result = verify_export(forged, pinned(signer))
    assert not result.ok and "not trusted" in result.reason


def test_truncation_after_the_last_checkpoint_is_reported(chain: list[str], signer: AuditSigner) -> None:
    # Drop the last checkpoint: events 9..12 are still chained but unsigned.
    result = verify_export(chain[:-1], pinned(signer))
    assert result.ok and result.unsigned_tail == 4 and result.last_signed_seq == 8


def test_a_rotation_record_not_signed_by_both_keys_is_refused(chain: list[str], signer: AuditSigner) -> None:
    mine = generate_key()
    forged_key = {"kind": "key", "key_id": mine.key_id, "public_key": mine.public_key, "created_at": "t",
                  "rotation": {"prev_key_id": signer.current().key_id,
                               "prev_public_key": signer.current().public_key, "ts": "t",
                               "prev_signature": b64u_encode(bytes(64)), "signature": b64u_encode(bytes(64))}}
    result = verify_export([chain[0], json.dumps(forged_key), *chain[1:]], pinned(signer))
    assert not result.ok and result.index == 1 and "both keys" in result.reason


@BACKENDS
async def test_tampering_with_database_rows_is_detected(db: Database, signer: AuditSigner,
                                                        tmp_path: Path) -> None:
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
        return next(i for i, line in enumerate(lines) if json.loads(line).get("event", {}).get("seq") == seq)

    # Edit: the actor of seq 3.
    lines = await run("UPDATE audit_events SET actor = 'operator:mallory' WHERE seq = 3")
    result = verify_export(lines, key)
    assert not result.ok and result.seq == 3 and result.index == line_of(lines, 3)
    await run("UPDATE audit_events SET actor = 'operator:test' WHERE seq = 3")
    assert verify_export(await export_lines(db), key).ok

    # Reorder: swap the sequence numbers of rows 5 and 6.
    lines = await run("UPDATE audit_events SET seq = -seq WHERE seq IN (5, 6)")
    lines = await run("UPDATE audit_events SET seq = CASE seq WHEN -5 THEN 6 ELSE 5 END WHERE seq < 0")
    result = verify_export(lines, key)
    assert not result.ok and result.seq == 5 and result.index == line_of(lines, 5)
    await run("UPDATE audit_events SET seq = -seq WHERE seq IN (5, 6)")
    await run("UPDATE audit_events SET seq = CASE seq WHEN -5 THEN 6 ELSE 5 END WHERE seq < 0")
    assert verify_export(await export_lines(db), key).ok

    # Delete: row 7 disappears; the line where it was now holds seq 8.
    before = await export_lines(db)
    lines = await run("DELETE FROM audit_events WHERE seq = 7")
    result = verify_export(lines, key)
    assert not result.ok and result.index == line_of(before, 7) and "expected seq 7" in result.reason
