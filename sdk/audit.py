"""The audit log's format and an offline verifier for its exports.

Everything a third party needs to check an Outpost audit export lives in this
one module: the canonical JSON encoding, the chain hash, the checkpoint and
key-rotation signatures, and :func:`verify_export`. It imports nothing of the
control plane (only the standard library and ``cryptography``), so an auditor
can copy this file and run it. ``docs/audit.md`` specifies the same procedure
in prose, precisely enough to reimplement it.

The chain: ``digest_n = SHA-256(canonical_json(event_n))`` and
``hash_n = SHA-256(hash_{n-1} || digest_n)`` over raw 32-byte values, with
``hash_0`` = 32 zero bytes. Hashing each event before chaining it is what lets
a tenant-scoped export replace other tenants' events by their digests and
still be recomputed end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "CHECKPOINT_CONTEXT",
    "EXPORT_FORMAT",
    "GENESIS_HASH",
    "ROTATION_CONTEXT",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "checkpoint_message",
    "event_digest",
    "key_id_for",
    "rotation_message",
    "verify_export",
    "verify_signature",
]

EXPORT_FORMAT = "outpost.audit.export"
CHECKPOINT_CONTEXT = "outpost.audit.checkpoint.v1"
ROTATION_CONTEXT = "outpost.audit.key-rotation.v1"
GENESIS_HASH = "0" * 64
# Integers beyond 2**53 lose precision in JavaScript and other double-based
# JSON parsers; a verifier in any language must read the same numbers.
_MAX_INT = 2**53 - 1


def _check_value(value: Any, path: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str):
            value.encode("utf-8")  # lone surrogates cannot be encoded: refuse them here
        return
    if isinstance(value, int):
        if abs(value) > _MAX_INT:
            raise ValueError(f"{path}: integer {value} is outside ±(2**53-1)")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not k.isascii():
                raise ValueError(f"{path}: object keys must be ASCII strings, got {k!r}")
            _check_value(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f"{path}[{i}]")
        return
    # Floats have no single canonical text form across languages; callers
    # record amounts as decimal strings and durations as integers.
    raise ValueError(f"{path}: {type(value).__name__} is not allowed in canonical JSON")


def canonical_json(value: Any) -> bytes:
    """The one byte encoding that is hashed and signed.

    Objects with keys sorted by code point, no insignificant whitespace,
    UTF-8 without ``\\u`` escapes for non-ASCII, and only strings, integers
    (|n| <= 2**53-1), booleans, null, arrays and objects (ASCII keys).
    """
    _check_value(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def event_digest(event: Mapping[str, Any]) -> str:
    """SHA-256 of the event's canonical JSON, hex."""
    return hashlib.sha256(canonical_json(event)).hexdigest()


def chain_hash(prev_hash: str, digest: str) -> str:
    """``SHA-256(prev || digest)`` over the raw 32-byte values, hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + bytes.fromhex(digest)).hexdigest()


def key_id_for(public_key: str) -> str:
    """A key's id: the first 16 bytes of SHA-256 of the raw public key, hex."""
    return hashlib.sha256(_b64u_decode(public_key)).hexdigest()[:32]


def checkpoint_message(seq: int, hash_: str, ts: str, key_id: str) -> bytes:
    return canonical_json(
        {"context": CHECKPOINT_CONTEXT, "hash": hash_, "key_id": key_id, "seq": seq, "ts": ts}
    )


def rotation_message(
    prev_key_id: str, prev_public_key: str, key_id: str, public_key: str, ts: str
) -> bytes:
    return canonical_json(
        {
            "context": ROTATION_CONTEXT,
            "key_id": key_id,
            "prev_key_id": prev_key_id,
            "prev_public_key": prev_public_key,
            "public_key": public_key,
            "ts": ts,
        }
    )


def _b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_signature(public_key: str, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64url) is ``public_key``'s Ed25519 signature over ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(_b64u_decode(public_key)).verify(
            _b64u_decode(signature), message
        )
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_export`.

    ``index`` is the 0-based line number of the first bad line (``None`` when
    ``ok``); ``seq`` the event sequence number there, when it has one.
    ``unsigned_tail`` counts events after the last verified checkpoint: they
    are chained but no signature vouches for them yet. ``kept_checkpoints``
    counts the checkpoints kept outside the control plane that were checked
    against this export.
    """

    ok: bool
    reason: str = ""
    index: int | None = None
    seq: int | None = None
    events: int = 0
    redacted: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    last_signed_seq: int | None = None
    unsigned_tail: int = 0
    trusted_keys: list[str] = field(default_factory=list)
    kept_checkpoints: int = 0

    def __bool__(self) -> bool:
        return self.ok


class _Bad(Exception):
    def __init__(self, index: int | None, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.index, self.reason, self.seq = index, reason, seq


_HEX64 = frozenset("0123456789abcdef")


def _is_hash(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


def _parse(lines: Iterable[str | bytes | Mapping[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if isinstance(line, Mapping):
            out.append(dict(line))
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise _Bad(i, "line is not valid JSON") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise _Bad(i, "line is not an object with a 'kind'")
        out.append(obj)
    return out


def _trusted_keys(records: list[dict[str, Any]], pinned: Iterable[str]) -> dict[str, str]:
    """Key id → public key for every key the verifier may trust.

    The pinned keys, plus any key joined to a trusted one by a rotation record
    that both keys signed (so trust flows both ways along a rotation chain).
    """
    trusted: dict[str, str] = {}
    for raw in pinned:
        key = raw.strip()
        try:
            if len(_b64u_decode(key)) != 32:
                raise ValueError
        except (ValueError, TypeError):
            raise _Bad(
                None, f"pinned public key {key[:12]}... is not a base64url Ed25519 key"
            ) from None
        trusted[key_id_for(key)] = key
    links: list[tuple[str, str, str, str]] = []
    for i, rec in enumerate(records):
        if rec["kind"] != "key":
            continue
        pk, kid = rec.get("public_key"), rec.get("key_id")
        if not isinstance(pk, str) or not isinstance(kid, str) or key_id_for(pk) != kid:
            raise _Bad(i, "key line: key_id does not match its public key")
        rot = rec.get("rotation")
        if not rot:
            continue
        try:
            msg = rotation_message(rot["prev_key_id"], rot["prev_public_key"], kid, pk, rot["ts"])
            prev_ok = key_id_for(rot["prev_public_key"]) == rot["prev_key_id"]
            both = (
                prev_ok
                and verify_signature(rot["prev_public_key"], msg, rot["prev_signature"])
                and verify_signature(pk, msg, rot["signature"])
            )
        except (KeyError, TypeError, ValueError):
            both = False
        if not both:
            raise _Bad(i, f"key line {kid}: rotation record is not signed by both keys")
        links.append((rot["prev_key_id"], rot["prev_public_key"], kid, pk))
    changed = True
    while changed:
        changed = False
        for prev_id, prev_pk, kid, pk in links:
            if prev_id in trusted and kid not in trusted:
                trusted[kid], changed = pk, True
            elif kid in trusted and prev_id not in trusted:
                trusted[prev_id], changed = prev_pk, True
    return trusted


def _check_signed(rec: dict[str, Any], i: int, trusted: dict[str, str], what: str) -> None:
    seq, h, ts, kid, sig = (rec.get(k) for k in ("seq", "hash", "ts", "key_id", "signature"))
    if not (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and _is_hash(h)
        and isinstance(ts, str)
        and isinstance(kid, str)
        and isinstance(sig, str)
    ):
        raise _Bad(i, f"{what} is malformed", seq if isinstance(seq, int) else None)
    if kid not in trusted:
        raise _Bad(i, f"{what} at seq {seq} is signed by key {kid}, which is not trusted", seq)
    if not verify_signature(trusted[kid], checkpoint_message(seq, h, ts, kid), sig):
        raise _Bad(i, f"{what} at seq {seq} has an invalid signature", seq)


def verify_export(
    lines: Iterable[str | bytes | Mapping[str, Any]],
    public_keys: Iterable[str],
    kept_checkpoints: Iterable[str | bytes | Mapping[str, Any]] = (),
) -> VerifyResult:
    """Verify an audit export offline, trusting only ``public_keys``.

    ``lines`` are the export's JSONL lines (or already-parsed objects);
    ``public_keys`` base64url raw Ed25519 public keys. ``kept_checkpoints``
    are checkpoints the verifier kept from earlier (``GET
    /api/audit/checkpoints``, or the checkpoint lines of an earlier export):
    each must be validly signed and lie on this export's chain, so a log
    whose newest events were removed together with their checkpoints fails.
    Returns a :class:`VerifyResult` naming the first bad line and why, if any.
    """
    result = VerifyResult(ok=False)
    try:
        records = _parse(lines)
        trusted = _trusted_keys(records, public_keys)
        result.trusted_keys = sorted(trusted)
        kept = _parse(kept_checkpoints)
        hashes = _walk(records, trusted, result)
        _check_kept(kept, trusted, hashes, len(records), result)
    except _Bad as bad:
        result.ok, result.reason, result.index, result.seq = False, bad.reason, bad.index, bad.seq
        return result
    except (
        ValueError,
        TypeError,
        KeyError,
    ) as exc:  # malformed material (bad base64, wrong types): refused
        result.ok, result.reason = False, f"malformed export: {type(exc).__name__}"
        return result
    result.ok = True
    return result


def _walk(
    records: list[dict[str, Any]], trusted: dict[str, str], result: VerifyResult
) -> dict[int, str]:
    walk = _Walk(records, trusted, result)
    for i, rec in enumerate(records):
        walk.step(i, rec)
    walk.finish()
    return walk.hashes


@dataclass
class _Walk:
    """One pass over an export's lines, in order: the chain as it is recomputed so far."""

    records: list[dict[str, Any]]
    trusted: dict[str, str]
    result: VerifyResult
    prev: str = GENESIS_HASH
    expected: int = 1
    hashes: dict[int, str] = field(default_factory=dict)
    header: dict[str, Any] | None = None
    started: bool = False
    anchor: tuple[int, int] | None = None  # (line, seq)
    prune_line: int | None = None  # the audit.prune event that announces the anchor
    tenants: _TenantSeqs = field(default_factory=lambda: _TenantSeqs())

    def step(self, i: int, rec: dict[str, Any]) -> None:
        kind = rec["kind"]
        if kind == "header":
            if i != 0 or rec.get("format") != EXPORT_FORMAT or rec.get("version") != 1:
                raise _Bad(
                    i, "header must be the first line, format outpost.audit.export version 1"
                )
            self.header = rec
        elif kind == "key":
            return  # handled by _trusted_keys
        elif kind == "anchor":
            self._anchor(i, rec)
        elif kind in ("event", "redacted"):
            self._entry(i, rec, kind)
        elif kind == "checkpoint":
            self._checkpoint(i, rec)
        else:
            raise _Bad(i, f"unknown line kind {kind!r}")

    def _anchor(self, i: int, rec: dict[str, Any]) -> None:
        if self.started:
            raise _Bad(i, "anchor must come before every event")
        _check_signed(rec, i, self.trusted, "anchor")
        self.prev, self.expected, self.started = rec["hash"], rec["seq"] + 1, True
        self.anchor = (i, rec["seq"])
        self.hashes[rec["seq"]] = self.prev
        self.result.last_signed_seq = rec["seq"]

    def _entry(self, i: int, rec: dict[str, Any], kind: str) -> None:
        self.started = True
        seq, digest = _entry(rec, i, kind)
        if seq != self.expected:
            raise _Bad(
                i,
                f"expected seq {self.expected}, found {seq} (an event was deleted, inserted or "
                "moved here)",
                seq,
            )
        self.prev = chain_hash(self.prev, digest)
        if rec.get("hash") != self.prev:
            raise _Bad(
                i, f"hash mismatch at seq {seq}: the event was altered or the chain broken", seq
            )
        self.hashes[seq] = self.prev
        self.expected += 1
        if kind == "event":
            self.tenants.check(rec["event"], i, genesis=self.anchor is None)
            if (
                self.anchor is not None
                and _announces(rec["event"], self.anchor[1])
                and self.prune_line is None
            ):
                self.prune_line = i
        result = self.result
        result.first_seq = seq if result.first_seq is None else result.first_seq
        result.last_seq = seq
        result.events += 1
        result.redacted += kind == "redacted"

    def _checkpoint(self, i: int, rec: dict[str, Any]) -> None:
        at = rec.get("seq")
        if not isinstance(at, int) or at not in self.hashes:
            raise _Bad(
                i,
                f"checkpoint for seq {at!r}, which is not in the chain before it",
                at if isinstance(at, int) else None,
            )
        if rec.get("hash") != self.hashes[at]:
            raise _Bad(
                i,
                f"checkpoint at seq {at} does not match the recomputed chain: events up to "
                f"{at} were rewritten",
                at,
            )
        _check_signed(rec, i, self.trusted, "checkpoint")
        self.result.checkpoints += 1
        self.result.last_signed_seq = max(at, self.result.last_signed_seq or 0)

    def finish(self) -> None:
        result, header, anchor = self.result, self.header, self.anchor
        if (
            header is not None
            and header.get("last_seq") is not None
            and header["last_seq"] != result.last_seq
        ):
            raise _Bad(
                len(self.records),
                f"export ends at seq {result.last_seq}, its header says {header['last_seq']} "
                "(truncated)",
            )
        if anchor is not None:
            # Deleting a prefix up to a signed checkpoint and calling that checkpoint the anchor
            # would otherwise verify: only `audit prune` writes the event, and a signature
            # covers it.
            if self.prune_line is None:
                raise _Bad(
                    anchor[0],
                    f"anchor at seq {anchor[1]} is not announced by an audit.prune event in "
                    "the chain: events before it were deleted outside `audit prune`",
                    anchor[1],
                )
            prune_seq = self.records[self.prune_line]["event"]["seq"]
            if prune_seq > (result.last_signed_seq or 0):
                raise _Bad(
                    self.prune_line,
                    f"the audit.prune event (seq {prune_seq}) for the anchor at seq {anchor[1]} "
                    "is not covered by a signed checkpoint",
                    prune_seq,
                )
        last = result.last_seq if result.last_seq is not None else (self.expected - 1)
        result.unsigned_tail = last - (result.last_signed_seq or 0)


def _announces(event: dict[str, Any], anchor_seq: int) -> bool:
    data = event.get("data")
    return (
        event.get("type") == "audit.prune"
        and event.get("tenant") is None
        and isinstance(data, dict)
        and data.get("anchor_seq") == anchor_seq
    )


class _TenantSeqs:
    """Each tenant's events carry ``tenant_seq`` 1, 2, 3, ...: a gap is an event of that tenant
    that is missing from the export or shown as a ``redacted`` line.

    Only tenants' own numbers are checked: the log's tenant-less events are
    partly redacted in tenant-scoped exports, so their numbers show gaps there.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def check(self, event: dict[str, Any], i: int, *, genesis: bool) -> None:
        seq, version, tenant = event["seq"], event.get("v"), event.get("tenant")
        if version == 1:
            if "tenant_seq" in event:
                raise _Bad(i, f"version 1 event at seq {seq} has a tenant_seq", seq)
            if isinstance(tenant, str) and tenant in self.last:
                raise _Bad(
                    i,
                    f"event at seq {seq} of tenant {tenant} has no tenant_seq after numbered ones",
                    seq,
                )
            return
        if version != 2:
            raise _Bad(i, f"unknown event version {version!r} at seq {seq}", seq)
        n = event.get("tenant_seq")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _Bad(i, f"event at seq {seq} needs a positive integer tenant_seq", seq)
        if not isinstance(tenant, str):
            return
        want = self.last[tenant] + 1 if tenant in self.last else (1 if genesis else None)
        if want is not None and n != want:
            raise _Bad(
                i,
                f"tenant {tenant}: expected tenant_seq {want}, found {n} (an event of this tenant "
                "is missing here or was shown as redacted)",
                seq,
            )
        self.last[tenant] = n


def _check_kept(
    kept: list[dict[str, Any]],
    trusted: dict[str, str],
    hashes: dict[int, str],
    end: int,
    result: VerifyResult,
) -> None:
    """Kept checkpoints must be genuine and lie on this export's chain (or before its anchor)."""
    first = min(hashes) if hashes else None  # the anchor's seq, or the first event's
    for n, rec in enumerate(kept):
        try:
            _check_signed(rec, end, trusted, f"kept checkpoint #{n}")
        except _Bad as bad:
            raise _Bad(None, bad.reason, bad.seq) from None
        seq = rec["seq"]
        if first is not None and seq < first:
            continue  # pruned before this export begins: the archive that holds it checks it
        if seq not in hashes:
            raise _Bad(
                end,
                f"a kept checkpoint vouches for seq {seq}, but this export ends at seq "
                f"{result.last_seq}: its newest events were removed (truncated)",
                seq,
            )
        if hashes[seq] != rec["hash"]:
            raise _Bad(
                end,
                f"a kept checkpoint at seq {seq} does not match this export's chain: events up to "
                f"{seq} were rewritten",
                seq,
            )
        result.kept_checkpoints += 1
        result.last_signed_seq = max(seq, result.last_signed_seq or 0)
    if result.kept_checkpoints:
        last = result.last_seq if result.last_seq is not None else (result.last_signed_seq or 0)
        result.unsigned_tail = max(0, last - (result.last_signed_seq or 0))


def _entry(rec: dict[str, Any], i: int, kind: str) -> tuple[int, str]:
    if kind == "redacted":
        seq, digest = rec.get("seq"), rec.get("digest")
        if not isinstance(seq, int) or isinstance(seq, bool) or not _is_hash(digest):
            raise _Bad(i, "redacted line needs an integer seq and a hex digest")
        return seq, digest
    event = rec.get("event")
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("seq"), int)
        or isinstance(event["seq"], bool)
    ):
        raise _Bad(i, "event line needs an 'event' object with an integer seq")
    try:
        return event["seq"], event_digest(event)
    except ValueError as exc:
        raise _Bad(i, f"event is not canonical-JSON encodable: {exc}", event["seq"]) from None
