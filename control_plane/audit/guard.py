"""What a signer knows of the chain independently of the database, checked before it signs.

The database is what an attacker with write access to it controls: the
events, their hashes, the head row and the checkpoint rows. A signer that
signed whatever the table holds would vouch for a consistent rewrite. So a
:class:`ChainGuard` remembers the last point of the chain it verified or
signed (in memory, and across restarts in a small *witness* file in the
state directory, outside the database), and before a signature it recomputes
the chain from that point to the tip. It refuses when:

- the event at the remembered point no longer has the remembered hash (the
  chain was rewritten: a consistent rewrite of events this process had
  already seen, including unsigned ones after the last checkpoint);
- an event is missing, out of order, or its stored hash does not follow;
- a stored checkpoint in the range does not match the recomputed chain;
- the remembered point was pruned without an ``audit.prune`` event naming the
  anchor, or the anchor's checkpoint is gone.

A process with no memory (a fresh CLI invocation, a first start) starts from
the newest stored checkpoint whose signature verifies with a key the
database lists: trust on first use, the same as a verifier without kept
checkpoints. Events appended and rewritten between two looks of the guard
(about one second for a server's checkpointer) cannot be told apart from
events written that way; docs/audit.md says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit.chain import Head, event_object
from outpost.control_plane.db.models import AuditCheckpoint, AuditEvent, AuditKey
from outpost.control_plane.settings import Settings
from outpost.sdk.audit import (
    GENESIS_HASH,
    chain_hash,
    checkpoint_message,
    event_digest,
    verify_signature,
)

__all__ = ["WITNESS_FILE", "ChainGuard", "ChainRefused", "Point", "database_id"]

log = logging.getLogger("outpost.audit")
_CHUNK = 250  # ~18 us of hashing per event: a chunk holds the event loop ~5 ms at most
WITNESS_FILE = "audit-witness.json"
_EVENT_COLUMNS = (
    AuditEvent.seq,
    AuditEvent.ts,
    AuditEvent.type,
    AuditEvent.actor,
    AuditEvent.tenant_id,
    AuditEvent.tenant_seq,
    AuditEvent.salt,
    AuditEvent.data,
    AuditEvent.hash,
)


class ChainRefused(RuntimeError):
    """The stored chain does not extend what this process verified or signed: nothing is signed."""


@dataclass(frozen=True)
class Point:
    seq: int
    hash: str


def database_id(url: str) -> str:
    """Which database a witness belongs to (the URL without its password, hashed)."""
    text = make_url(url).render_as_string(hide_password=True) if "://" in url else url
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ChainGuard:
    """The last verified point of one database's chain; ``witness`` persists the last signed one."""

    def __init__(self, witness: Path | None = None, database: str = "") -> None:
        self.witness, self.database = witness, database
        self.point: Point | None = self._load()

    @classmethod
    def from_settings(cls, settings: Settings) -> ChainGuard:
        """The guard of this host's processes: its witness lives in the state directory, beside
        the key."""
        return cls(settings.state_dir / WITNESS_FILE, database_id(settings.database_url))

    def _load(self) -> Point | None:
        if self.witness is None:
            return None
        try:
            doc = json.loads(self.witness.read_text(encoding="utf-8"))
            if doc.get("database") == self.database:
                return Point(int(doc["seq"]), str(doc["hash"]))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning(
                "audit witness %s is unreadable (%s); starting from the stored checkpoint",
                self.witness,
                exc,
            )
        return None

    def signed(self, seq: int, hash_: str) -> None:
        """Remember a point this process signed, in the witness file too (atomically)."""
        self.point = Point(seq, hash_)
        if self.witness is None:
            return
        try:
            self.witness.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.witness.with_name(self.witness.name + ".new")
            tmp.write_text(
                json.dumps({"database": self.database, "seq": seq, "hash": hash_}), encoding="utf-8"
            )
            os.replace(tmp, self.witness)
        except OSError as exc:  # the in-memory point still guards this process
            log.warning("could not write the audit witness %s: %s", self.witness, exc)

    async def verify(self, session: AsyncSession, head: Head) -> None:
        """Recompute the stored chain from the remembered point to ``head``; raise
        :class:`ChainRefused`.

        On success the remembered point moves to ``head`` (in memory only).
        """
        start = await self._start(session, head)
        prev, expected = start.hash, start.seq + 1
        checkpoints = dict(
            (
                await session.execute(
                    select(AuditCheckpoint.seq, AuditCheckpoint.hash).where(
                        AuditCheckpoint.seq > start.seq, AuditCheckpoint.seq <= head.seq
                    )
                )
            ).all()
        )
        while expected <= head.seq:
            # Columns, not ORM objects: nothing lands in the caller's session, and it is faster.
            rows = (
                await session.execute(
                    select(*_EVENT_COLUMNS)
                    .where(AuditEvent.seq >= expected, AuditEvent.seq <= head.seq)
                    .order_by(AuditEvent.seq)
                    .limit(_CHUNK)
                )
            ).all()
            if not rows:
                break
            for row in rows:
                if row.seq != expected:
                    raise ChainRefused(f"audit event {expected} is missing from the stored chain")
                prev = chain_hash(prev, event_digest(event_object(row)))
                if row.hash != prev:
                    raise ChainRefused(
                        f"stored hash of audit event {row.seq} does not follow from the last "
                        f"verified point (seq {start.seq}): the chain was rewritten"
                    )
                if checkpoints.get(row.seq, prev) != prev:
                    raise ChainRefused(
                        f"the stored checkpoint at seq {row.seq} does not match the chain"
                    )
                expected += 1
        if expected != head.seq + 1:
            raise ChainRefused(
                f"audit events {expected}..{head.seq} are missing from the stored chain"
            )
        if prev != head.hash:
            raise ChainRefused(f"the chain's head (seq {head.seq}) does not match its last event")
        self.point = Point(head.seq, head.hash)

    async def _start(self, session: AsyncSession, head: Head) -> Point:
        anchor = await self._anchor(
            session, head
        )  # whatever the start, a prune must have been announced
        point = self.point
        if point is not None and point.seq > head.seq:
            raise ChainRefused(
                f"the chain ends at seq {head.seq}, but this process verified it up to seq "
                f"{point.seq}: its newest events were removed"
            )
        if (
            point is not None and point.seq <= head.anchor_seq
        ):  # pruned past it since: restart from the anchor
            if point.seq == anchor.seq and point.hash != anchor.hash:
                raise ChainRefused(
                    f"the anchor at seq {anchor.seq} is not the chain this process verified"
                )
            return anchor
        if point is None:
            return await self._first_use(session, head, anchor)
        if point.seq > 0:
            stored = (
                await session.execute(select(AuditEvent.hash).where(AuditEvent.seq == point.seq))
            ).scalar()
            if stored != point.hash:
                raise ChainRefused(
                    f"the stored chain no longer passes through seq {point.seq} with the hash this "
                    "process verified: the chain was rewritten"
                )
        return point

    async def _anchor(self, session: AsyncSession, head: Head) -> Point:
        if head.anchor_seq == 0:
            return Point(0, GENESIS_HASH)
        anchor = (
            await session.execute(
                select(AuditCheckpoint.hash).where(AuditCheckpoint.seq == head.anchor_seq)
            )
        ).scalar()
        if anchor is None:
            raise ChainRefused(f"the anchor checkpoint at seq {head.anchor_seq} is missing")
        prunes: Iterable[object] = (
            await session.execute(
                select(AuditEvent.data).where(
                    AuditEvent.type == "audit.prune",
                    AuditEvent.tenant_id.is_(None),
                    AuditEvent.seq > head.anchor_seq,
                )
            )
        ).scalars()
        if not any(isinstance(d, dict) and d.get("anchor_seq") == head.anchor_seq for d in prunes):
            raise ChainRefused(
                f"events up to seq {head.anchor_seq} were deleted without an audit.prune event"
            )
        return Point(head.anchor_seq, anchor)

    async def _first_use(self, session: AsyncSession, head: Head, anchor: Point) -> Point:
        keys = dict((await session.execute(select(AuditKey.key_id, AuditKey.public_key))).all())
        rows = (
            (
                await session.execute(
                    select(AuditCheckpoint)
                    .where(AuditCheckpoint.seq > head.anchor_seq, AuditCheckpoint.seq <= head.seq)
                    .order_by(AuditCheckpoint.seq.desc())
                    .limit(1)
                )
            )
            .scalars()
            .all()
        )
        for row in rows:
            message = checkpoint_message(row.seq, row.hash, row.ts, row.key_id)
            if row.key_id not in keys or not verify_signature(
                keys[row.key_id], message, row.signature
            ):
                raise ChainRefused(f"the stored checkpoint at seq {row.seq} has no valid signature")
            stored = (
                await session.execute(select(AuditEvent.hash).where(AuditEvent.seq == row.seq))
            ).scalar()
            if stored != row.hash:
                raise ChainRefused(
                    f"the stored checkpoint at seq {row.seq} does not match the chain"
                )
            return Point(row.seq, row.hash)
        return anchor
