"""The control plane's Ed25519 audit key: a file in the state directory, mode 0600.

The file holds one key, the current one. Rotation replaces it atomically; the
old *public* key stays in the ``audit_keys`` table (and in every export) so
old checkpoints still verify. A running server re-reads the file when it
changes, so ``control-plane audit keys rotate`` needs no restart.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from outpost.control_plane.audit.chain import utc_ts
from outpost.control_plane.settings import Settings
from outpost.sdk.audit import checkpoint_message, key_id_for
from outpost.sdk.identity import b64u_decode, b64u_encode

__all__ = [
    "AuditKeyPair",
    "AuditSigner",
    "generate_key",
    "key_path",
    "load_or_create_key",
    "write_key",
]

log = logging.getLogger("outpost.audit")


@dataclass(frozen=True)
class AuditKeyPair:
    key_id: str
    public_key: str  # base64url, raw 32 bytes
    private: Ed25519PrivateKey
    created_at: str

    def sign(self, message: bytes) -> str:
        return b64u_encode(self.private.sign(message))


def key_path(settings: Settings) -> Path:
    configured = settings.audit_key_file
    if configured is None or str(configured) in ("", "."):
        return settings.state_dir / "audit-key.json"
    return configured


def generate_key() -> AuditKeyPair:
    private = Ed25519PrivateKey.generate()
    public = b64u_encode(private.public_key().public_bytes_raw())
    return AuditKeyPair(key_id_for(public), public, private, utc_ts())


def _encode(key: AuditKeyPair) -> bytes:
    return (
        json.dumps(
            {
                "algorithm": "ed25519",
                "key_id": key.key_id,
                "public_key": key.public_key,
                "private_key": b64u_encode(key.private.private_bytes_raw()),
                "created_at": key.created_at,
            },
            indent=2,
        ).encode()
        + b"\n"
    )


def _decode(raw: bytes, path: Path) -> AuditKeyPair:
    try:
        doc = json.loads(raw)
        private = Ed25519PrivateKey.from_private_bytes(b64u_decode(doc["private_key"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"audit key file {path} is unreadable: {exc}") from None
    public = b64u_encode(private.public_key().public_bytes_raw())
    return AuditKeyPair(key_id_for(public), public, private, str(doc.get("created_at") or utc_ts()))


def write_key(path: Path, key: AuditKeyPair, *, replace: bool) -> None:
    """Write ``key`` with mode 0600; ``replace`` swaps it in atomically (rotation)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path.with_name(path.name + ".new") if replace else path
    if replace:
        target.unlink(missing_ok=True)  # a leftover of an interrupted rotation
    # O_EXCL: two processes starting together cannot both create a key, and
    # the file is 0600 from its first byte.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_encode(key))
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(target, path)


def load_or_create_key(path: Path) -> AuditKeyPair:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        key = generate_key()
        try:
            write_key(path, key, replace=False)
            log.info("created audit key %s at %s", key.key_id, path)
            return key
        except FileExistsError:  # another process won the race: use its key
            raw = path.read_bytes()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("audit key file %s is readable by others (mode %o); chmod 600 it", path, mode)
    return _decode(raw, path)


class AuditSigner:
    """Signs checkpoints with the current key, picking up rotations from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: AuditKeyPair | None = None
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditSigner:
        return cls(key_path(settings))

    def current(self) -> AuditKeyPair:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._key is None or stamp != self._stamp:
            self._key = load_or_create_key(self.path)
            st = self.path.stat()
            self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return self._key

    def sign_checkpoint(self, seq: int, hash_: str, ts: str) -> tuple[str, str]:
        """Returns ``(key_id, signature)`` over the checkpoint message."""
        key = self.current()
        return key.key_id, key.sign(checkpoint_message(seq, hash_, ts, key.key_id))
