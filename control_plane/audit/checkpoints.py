"""Signed checkpoints: (seq, head hash) signed by the audit key, every N events or T seconds.

Appends never sign (they run in every process, including one-shot CLI
commands, and must stay cheap); a background task in each server process
checks the head about once a second and signs when a checkpoint is due.
Several processes may run it: the head lock makes exactly one of them sign a
given tip, and the checkpoint's primary key (its seq) forbids duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.chain import Head, lock_head, read_head, utc_ts
from outpost.control_plane.audit.guard import ChainGuard, ChainRefused
from outpost.control_plane.audit.keys import AuditKeyPair, AuditSigner
from outpost.control_plane.db.engine import Database, database_down
from outpost.control_plane.db.models import AuditCheckpoint, AuditHead, AuditKey
from outpost.control_plane.settings import Settings

__all__ = [
    "ChainRefused",
    "Checkpointer",
    "checkpoint_if_due",
    "is_due",
    "register_key",
    "sign_checkpoint",
    "write_checkpoint",
]

log = logging.getLogger("outpost.audit")


def _insert(session: AsyncSession) -> Callable[..., Any]:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def register_key(
    session: AsyncSession, key: AuditKeyPair, *, rotation: dict[str, str] | None = None
) -> None:
    """Record a public key (idempotent). ``rotation`` holds the cross-signed rotation record."""
    rot = rotation or {}
    values = {
        "key_id": key.key_id,
        "public_key": key.public_key,
        "created_at": key.created_at,
        "prev_key_id": rot.get("prev_key_id"),
        "prev_public_key": rot.get("prev_public_key"),
        "rotated_at": rot.get("ts"),
        "prev_signature": rot.get("prev_signature"),
        "signature": rot.get("signature"),
    }
    await session.execute(_insert(session)(AuditKey).values(**values).on_conflict_do_nothing())


def is_due(head: Head, every_n: int, every_s: float, now: datetime | None = None) -> bool:
    pending = head.seq - head.checkpoint_seq
    if pending <= 0:
        return False
    if pending >= every_n or head.checkpoint_ts is None:
        return True
    last = datetime.strptime(head.checkpoint_ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - last).total_seconds() >= every_s


async def sign_checkpoint(
    session: AsyncSession, signer: AuditSigner, seq: int, hash_: str
) -> AuditCheckpoint:
    """Sign (seq, hash) and store it; the caller vouches that ``hash_`` is the chain's hash at
    ``seq``."""
    ts = utc_ts()
    key_id, signature = signer.sign_checkpoint(seq, hash_, ts)
    await register_key(session, signer.current())
    row = AuditCheckpoint(seq=seq, hash=hash_, ts=ts, key_id=key_id, signature=signature)
    session.add(row)
    await session.flush()
    return row


async def write_checkpoint(
    session: AsyncSession, signer: AuditSigner, guard: ChainGuard | None = None
) -> AuditCheckpoint | None:
    """Re-verify the chain, then sign its tip (no-op when it is already signed). No commit.

    ``guard`` is what the caller remembers of the chain; without one the chain
    is recomputed from the newest stored checkpoint. Raises
    :class:`ChainRefused` instead of signing a chain that does not extend it.
    """
    head = await lock_head(session)
    if head.seq <= head.checkpoint_seq:
        return None
    guard = guard or ChainGuard()
    await guard.verify(session, head)
    row = await sign_checkpoint(session, signer, head.seq, head.hash)
    await session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(checkpoint_seq=row.seq, checkpoint_ts=row.ts)
        .execution_options(synchronize_session=False)
    )
    guard.signed(row.seq, row.hash)
    return row


async def checkpoint_if_due(
    session: AsyncSession,
    signer: AuditSigner,
    every_n: int,
    every_s: float,
    guard: ChainGuard | None = None,
) -> AuditCheckpoint | None:
    """Sign the tip when a checkpoint is due (re-verifying first, as ``write_checkpoint``). No
    commit."""
    # Look without the lock first: most polls find nothing to do and must not
    # queue behind (or block) appends.
    if not is_due(await read_head(session), every_n, every_s):
        return None
    if not is_due(await lock_head(session), every_n, every_s):
        return None
    return await write_checkpoint(session, signer, guard)


class Checkpointer:
    """The per-process background task; ``stop`` signs whatever is still unsigned.

    Every look follows the chain as it grows (the guard recomputes the events
    appended since the last look, without the head lock), so an event this
    process has seen cannot later be rewritten and signed. A refusal is loud:
    logged at ERROR, counted (``outpost_audit_checkpoint_refusals_total``) and
    shown as a banner in the console until the chain verifies again.
    """

    def __init__(
        self,
        db: Database,
        signer: AuditSigner,
        every_n: int,
        every_s: float,
        guard: ChainGuard | None = None,
    ) -> None:
        self.db, self.signer, self.every_n, self.every_s = db, signer, every_n, every_s
        self.guard = guard or ChainGuard()
        self.poll_s = min(1.0, every_s)
        self.alarm: str | None = None  # why the last look refused the chain; None while it verifies
        self.refusals = 0
        self._task: asyncio.Task[None] | None = None
        self._down = False  # the last attempt found the database unavailable

    @classmethod
    def from_settings(cls, db: Database, settings: Settings) -> Checkpointer:
        return cls(
            db,
            AuditSigner.from_settings(settings),
            settings.audit_checkpoint_every_n,
            settings.audit_checkpoint_every_s,
            ChainGuard.from_settings(settings),
        )

    async def start(self) -> None:
        async with self.db.session() as session:
            await register_key(session, self.signer.current())
            await session.commit()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-checkpointer")

    async def tick(self) -> AuditCheckpoint | None:
        """One look: follow the chain, and sign its tip when a checkpoint is due."""
        try:
            row = await self._look()
        except ChainRefused as refused:
            self._refuse(str(refused))
            return None
        if self.alarm is not None:
            log.warning("audit chain verifies again; checkpoints resume (was: %s)", self.alarm)
            self.alarm = None
        return row

    async def _look(self) -> AuditCheckpoint | None:
        suspect = False
        async with self.db.session() as session:
            head = await read_head(session)
            point = self.guard.point
            if point is None or (point.seq, point.hash) != (head.seq, head.hash):
                try:
                    await self.guard.verify(session, head)
                except ChainRefused:
                    # Confirm under the lock: a prune running right now deletes rows mid-read.
                    suspect = True
            if not suspect and not is_due(head, self.every_n, self.every_s):
                return None
        async with self.db.session() as session:
            head = await lock_head(session)
            if not is_due(head, self.every_n, self.every_s):
                await self.guard.verify(session, head)
                await session.rollback()
                return None
            row = await write_checkpoint(session, self.signer, self.guard)
            await session.commit()
            return row

    def _refuse(self, reason: str) -> None:
        self.refusals += 1
        if reason != self.alarm:  # once per distinct finding, not once a second
            log.error(
                "audit checkpoint REFUSED: %s. Nothing is signed until the stored chain extends "
                "the last verified head again; export and verify the log (docs/audit.md).",
                reason,
            )
        self.alarm = reason

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not database_down(exc):
                    log.exception("audit checkpoint failed")
                elif not self._down:
                    # Once per outage: the next due checkpoint covers what this one would have.
                    log.warning(
                        "audit checkpoint skipped: database unavailable (%s)", type(exc).__name__
                    )
                self._down = True
            else:
                self._down = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            async with self.db.session() as session:
                if await write_checkpoint(session, self.signer, self.guard):
                    await session.commit()
        except ChainRefused as refused:
            self._refuse(str(refused))
        except Exception:
            log.exception("final audit checkpoint failed")

    def collector(self) -> Collector:
        """Prometheus metrics of this checkpointer, read at scrape time."""
        return _CheckpointerCollector(self)


class _CheckpointerCollector(Collector):
    def __init__(self, checkpointer: Checkpointer) -> None:
        self._cp = checkpointer

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "outpost_audit_checkpoint_refusals",
            "Looks at the audit chain that found it "
            "does not extend the last verified head (nothing was signed).",
            value=self._cp.refusals,
        )
        yield GaugeMetricFamily(
            "outpost_audit_chain_alarm",
            "1 while the audit checkpointer refuses to sign.",
            value=1 if self._cp.alarm else 0,
        )
