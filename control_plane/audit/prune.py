"""Retention: export a prefix of the log, check the archive, then delete the prefix.

The prefix ends at a signed checkpoint (one is signed at the boundary if
none exists there). That checkpoint stays in the database as the *anchor*:
later exports start from it, so the remaining chain still verifies, and the
archive (which ends with the same checkpoint) chains onto it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.chain import event_object, format_ts, lock_head, read_head
from outpost.control_plane.audit.checkpoints import sign_checkpoint, write_checkpoint
from outpost.control_plane.audit.events import record_system
from outpost.control_plane.audit.export import export_records, jsonl
from outpost.control_plane.audit.guard import ChainGuard
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import AuditCheckpoint, AuditEvent, AuditHead, AuditKey
from outpost.sdk.audit import chain_hash, event_digest, verify_export

__all__ = ["PruneResult", "prune_before"]


@dataclass(frozen=True)
class PruneResult:
    anchor_seq: int  # 0: nothing was old enough
    pruned: int
    archive: Path | None


async def _boundary(session: AsyncSession, before: str, anchor_seq: int) -> int | None:
    stmt = select(func.max(AuditEvent.seq)).where(
        AuditEvent.ts < before, AuditEvent.seq > anchor_seq
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def _check_prefix(session: AsyncSession, anchor_seq: int, through: int) -> str:
    """Recompute the stored chain up to ``through``; we sign only what we have re-hashed."""
    if anchor_seq:
        prev = (
            await session.execute(
                select(AuditCheckpoint.hash).where(AuditCheckpoint.seq == anchor_seq)
            )
        ).scalar_one()
    else:
        prev = "0" * 64
    expected = anchor_seq + 1
    stmt = (
        select(AuditEvent)
        .where(AuditEvent.seq > anchor_seq, AuditEvent.seq <= through)
        .order_by(AuditEvent.seq)
    )
    for row in (await session.execute(stmt)).scalars():
        prev = chain_hash(prev, event_digest(event_object(row)))
        if row.seq != expected or row.hash != prev:
            raise RuntimeError(
                f"audit chain is broken at seq {row.seq}; refusing to prune (export and "
                "verify it to investigate)"
            )
        expected += 1
    if expected != through + 1:
        raise RuntimeError(f"audit chain has a gap before seq {through}; refusing to prune")
    return prev


async def _announced_at(session: AsyncSession, anchor_seq: int) -> int:
    """The seq of the ``audit.prune`` event that announced the current anchor (0: genesis)."""
    if anchor_seq == 0:
        return 0
    result = await session.execute(
        select(AuditEvent.seq, AuditEvent.data)
        .where(
            AuditEvent.type == "audit.prune",
            AuditEvent.tenant_id.is_(None),
            AuditEvent.seq > anchor_seq,
        )
        .order_by(AuditEvent.seq)
    )
    for row in result:
        if isinstance(row.data, dict) and row.data.get("anchor_seq") == anchor_seq:
            seq: int = row.seq
            return seq
    return 0


async def prune_before(
    db: Database,
    signer: AuditSigner,
    before: datetime,
    archive: Path,
    *,
    actor: str,
    guard: ChainGuard | None = None,
) -> PruneResult:
    """Archive every event older than ``before`` to ``archive`` (JSONL), then delete them."""
    cutoff = format_ts(before)
    async with db.session() as session:
        head = await read_head(session)
        through = await _boundary(session, cutoff, head.anchor_seq)
        # A verifier accepts an anchor only with the audit.prune event that announced it, so
        # every archive must reach the previous prune's event: never cut before it.
        if through is None or through < await _announced_at(session, head.anchor_seq):
            return PruneResult(head.anchor_seq, 0, None)
        signed = (
            await session.execute(select(AuditCheckpoint.seq).where(AuditCheckpoint.seq == through))
        ).scalar_one_or_none()
        if signed is None:
            tip = await _check_prefix(session, head.anchor_seq, through)
            await sign_checkpoint(session, signer, through, tip)
            await session.commit()

    tmp = archive.with_name(archive.name + ".partial")
    async with db.session() as session:
        # Run by the CLI, alone on its loop: blocking file I/O stalls nothing.
        with open(tmp, "w", encoding="utf-8") as f:  # noqa: ASYNC230
            async for record in export_records(session, until_seq=through):
                f.write(jsonl(record))
            f.flush()
            os.fsync(f.fileno())
        keys = [k.public_key for k in (await session.execute(select(AuditKey))).scalars()]
    # Self-check, trusting our own keys: proves the archive on disk is
    # complete and consistent before anything is deleted (it is no substitute
    # for verifying the archive against a pinned key).
    with open(tmp, encoding="utf-8") as f:  # noqa: ASYNC230
        check = verify_export(f, keys)
    if not check.ok or check.last_signed_seq != through:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"archive failed its own verification ({check.reason}); nothing was pruned"
        )
    os.replace(tmp, archive)

    async with db.session() as session:
        locked = await lock_head(session)
        if locked.anchor_seq != head.anchor_seq:
            raise RuntimeError("another prune ran concurrently; nothing was pruned")
        deleted = await session.execute(
            delete(AuditEvent)
            .where(AuditEvent.seq <= through)
            .execution_options(synchronize_session=False)
        )
        pruned = cast("CursorResult[Any]", deleted).rowcount
        await session.execute(
            delete(AuditCheckpoint)
            .where(AuditCheckpoint.seq < through)
            .execution_options(synchronize_session=False)
        )
        moved: dict[str, object] = {"anchor_seq": through}
        if locked.checkpoint_seq < through:  # the anchor is now the newest signature
            anchor_ts = (
                await session.execute(
                    select(AuditCheckpoint.ts).where(AuditCheckpoint.seq == through)
                )
            ).scalar_one()
            moved.update(checkpoint_seq=through, checkpoint_ts=anchor_ts)
        await session.execute(
            update(AuditHead)
            .where(AuditHead.id == 1)
            .values(**moved)
            .execution_options(synchronize_session=False)
        )
        await record_system(
            session,
            action="prune",
            actor=actor,
            details={
                "before": cutoff,
                "anchor_seq": through,
                "pruned": pruned,
                "archive": archive.name,
            },
        )
        # Signed at once: exports stop at the latest checkpoint, and one that shows the anchor
        # must also show the (signed) event announcing it.
        await write_checkpoint(session, signer, guard)
        await session.commit()
    return PruneResult(through, pruned, archive)
