"""Audit exports: JSONL of header, public keys, anchor, events and checkpoints.

A tenant-scoped export shows the tenant's own events in full and every other
event as a *redacted* line: its seq, the SHA-256 of its canonical JSON and
the chain hash after it. That is exactly what the chain step consumes, so the
tenant can recompute the whole chain and check every checkpoint signature
without learning anything about the other events (each carries a random salt,
so its digest cannot be confirmed by guessing its content).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.chain import event_object, read_head, utc_ts
from outpost.control_plane.db.models import AuditCheckpoint, AuditEvent, AuditKey
from outpost.sdk.audit import EXPORT_FORMAT, event_digest

__all__ = ["checkpoint_line", "export_records", "jsonl", "key_line", "visible_to"]

_BATCH = 1000


def jsonl(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def key_line(row: AuditKey) -> dict[str, Any]:
    rotation = None
    if row.prev_key_id:
        rotation = {
            "prev_key_id": row.prev_key_id,
            "prev_public_key": row.prev_public_key,
            "ts": row.rotated_at,
            "prev_signature": row.prev_signature,
            "signature": row.signature,
        }
    return {
        "kind": "key",
        "key_id": row.key_id,
        "public_key": row.public_key,
        "created_at": row.created_at,
        "rotation": rotation,
    }


def checkpoint_line(row: AuditCheckpoint, kind: str = "checkpoint") -> dict[str, Any]:
    return {
        "kind": kind,
        "seq": row.seq,
        "hash": row.hash,
        "ts": row.ts,
        "key_id": row.key_id,
        "signature": row.signature,
    }


def visible_to(row: AuditEvent, tenant_id: str | None) -> bool:
    """Whether a ``tenant_id``-scoped export shows ``row`` in full.

    The log's own housekeeping (``audit.prune``, ``audit.key.rotate``) is shown
    to every tenant: it holds no tenant's data, and a verifier needs the
    ``audit.prune`` event to accept an anchor.
    """
    if tenant_id is None or row.tenant_id == tenant_id:
        return True
    return row.tenant_id is None and row.type.startswith("audit.")


def _entry(row: AuditEvent, tenant_id: str | None) -> dict[str, Any]:
    event = event_object(row)
    if not visible_to(row, tenant_id):
        return {"kind": "redacted", "seq": row.seq, "digest": event_digest(event), "hash": row.hash}
    return {"kind": "event", "event": event, "hash": row.hash}


async def export_records(
    session: AsyncSession, *, tenant_id: str | None = None, until_seq: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Yield the export's records in order, from the anchor (or genesis) to ``until_seq`` (or the
    tip).

    ``tenant_id`` scopes it: other tenants' and global events become redacted lines.
    """
    head = await read_head(session)
    last = head.seq if until_seq is None else max(min(until_seq, head.seq), head.anchor_seq)
    first = head.anchor_seq + 1
    has_events = last >= first
    yield {
        "kind": "header",
        "format": EXPORT_FORMAT,
        "version": 1,
        "exported_at": utc_ts(),
        "scope": "tenant" if tenant_id else "all",
        "tenant": tenant_id,
        "first_seq": first if has_events else None,
        "last_seq": last if has_events else None,
    }
    for key in (
        await session.execute(select(AuditKey).order_by(AuditKey.created_at, AuditKey.key_id))
    ).scalars():
        yield key_line(key)
    checkpoints = list(
        (
            await session.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.seq >= head.anchor_seq, AuditCheckpoint.seq <= last)
                .order_by(AuditCheckpoint.seq)
            )
        ).scalars()
    )
    if head.anchor_seq > 0:
        if not checkpoints or checkpoints[0].seq != head.anchor_seq:
            raise RuntimeError(f"the anchor checkpoint at seq {head.anchor_seq} is missing")
        yield checkpoint_line(checkpoints.pop(0), "anchor")
    elif checkpoints and checkpoints[0].seq == 0:
        checkpoints.pop(0)
    after = head.anchor_seq
    while after < last:
        rows = list(
            (
                await session.execute(
                    select(AuditEvent)
                    .where(AuditEvent.seq > after, AuditEvent.seq <= last)
                    .order_by(AuditEvent.seq)
                    .limit(_BATCH)
                )
            ).scalars()
        )
        if not rows:
            break
        for row in rows:
            yield _entry(row, tenant_id)
            while checkpoints and checkpoints[0].seq <= row.seq:
                yield checkpoint_line(checkpoints.pop(0))
        after = rows[-1].seq
        session.expunge_all()  # keep memory flat on long exports
