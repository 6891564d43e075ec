"""Runner key material: an Ed25519 identity key and an HPKE key pair.

The identity key is long-lived and is what clients pin (by
:func:`fingerprint`). The HPKE key pair receives sealed requests; its public
half reaches clients inside a document signed by the identity key
(:mod:`sdk.e2e.keydoc`), so the control plane that serves it cannot swap it.

Two KEMs are supported (RFC 9180 HPKE as shipped by ``cryptography``; no
KEM is implemented here):

- ``x25519`` — DHKEM(X25519, HKDF-SHA256), the default: 32-byte keys,
  32-byte encapsulation.
- ``mlkem768-x25519`` — the ML-KEM-768 + X25519 hybrid: stays confidential
  if either half holds, so prompts recorded today survive a future quantum
  computer. Costs a 1,184-byte public key, a 1,120-byte encapsulation and
  roughly 0.1 ms more per request.

Both use HKDF-SHA256 and ChaCha20-Poly1305 as HPKE's KDF and AEAD.
"""

from __future__ import annotations

import enum
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._codec import b64d, b64e, canonical_json, loads_strict, to_text
from .errors import MalformedError, UnsupportedVersionError

__all__ = [
    "HpkePrivateKey",
    "HpkePublicKey",
    "Kem",
    "RunnerKeys",
    "fingerprint",
    "normalize_fingerprint",
]

_X25519_LEN = 32
_MLKEM768_PUBLIC_LEN = 1184
_MLKEM768_SEED_LEN = 64
_KEY_FILE_VERSION = 1
_MAX_KEY_FILE_CHARS = 4096


class Kem(enum.StrEnum):
    """The HPKE KEM of a runner's key pair; the value is the wire name."""

    X25519 = "x25519"
    MLKEM768_X25519 = "mlkem768-x25519"

    @property
    def suite(self) -> hpke.Suite:
        kem = hpke.KEM.X25519 if self is Kem.X25519 else hpke.KEM.MLKEM768_X25519
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)

    @property
    def public_length(self) -> int:
        return _X25519_LEN if self is Kem.X25519 else _MLKEM768_PUBLIC_LEN + _X25519_LEN

    @property
    def private_length(self) -> int:
        return _X25519_LEN if self is Kem.X25519 else _MLKEM768_SEED_LEN + _X25519_LEN

    @property
    def enc_length(self) -> int:
        kem = hpke.KEM.X25519 if self is Kem.X25519 else hpke.KEM.MLKEM768_X25519
        return kem.enc_length()

    @classmethod
    def parse(cls, value: object) -> Kem:
        if not isinstance(value, str):
            raise MalformedError(f"unknown KEM {str(value)[:32]!r}")
        try:
            return cls(value)
        except ValueError:
            raise MalformedError(f"unknown KEM {str(value)[:32]!r}") from None


@dataclass(frozen=True)
class HpkePublicKey:
    """An HPKE public key and its KEM; ``raw`` is the wire encoding.

    The hybrid's encoding is the ML-KEM-768 public key followed by the X25519
    public key (the order X-Wing uses).
    """

    kem: Kem
    raw: bytes = field(repr=False)
    key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != self.kem.public_length:
            raise MalformedError(f"{self.kem} public key must be {self.kem.public_length} bytes")
        try:
            if self.kem is Kem.X25519:
                key: Any = x25519.X25519PublicKey.from_public_bytes(self.raw)
            else:
                key = hpke.MLKEM768X25519PublicKey(
                    mlkem.MLKEM768PublicKey.from_public_bytes(self.raw[:_MLKEM768_PUBLIC_LEN]),
                    x25519.X25519PublicKey.from_public_bytes(self.raw[_MLKEM768_PUBLIC_LEN:]),
                )
        except ValueError as exc:
            raise MalformedError(f"invalid {self.kem} public key: {exc}") from None
        object.__setattr__(self, "key", key)

    @property
    def key_id(self) -> bytes:
        """8 bytes naming this key, so a runner can tell a stale key from a forgery."""
        digest = hashlib.sha256(b"outpost-e2e/v1 key-id\x00" + self.kem.encode() + self.raw)
        return digest.digest()[:8]

    def to_b64(self) -> str:
        return b64e(self.raw)

    @classmethod
    def from_b64(cls, kem: Kem | str, text: str) -> HpkePublicKey:
        return cls(Kem.parse(kem), b64d(text, "HPKE public key"))


@dataclass(frozen=True, repr=False)
class HpkePrivateKey:
    """An HPKE private key; ``raw`` is a seed (hybrid: ML-KEM seed ‖ X25519)."""

    kem: Kem
    raw: bytes
    key: Any = field(init=False, compare=False)
    public: HpkePublicKey = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) != self.kem.private_length:
            raise MalformedError(f"{self.kem} private key must be {self.kem.private_length} bytes")
        if self.kem is Kem.X25519:
            xk = x25519.X25519PrivateKey.from_private_bytes(self.raw)
            key: Any = xk
            public_raw = xk.public_key().public_bytes_raw()
        else:
            mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(self.raw[:_MLKEM768_SEED_LEN])
            xk = x25519.X25519PrivateKey.from_private_bytes(self.raw[_MLKEM768_SEED_LEN:])
            key = hpke.MLKEM768X25519PrivateKey(mk, xk)
            public_raw = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "public", HpkePublicKey(self.kem, public_raw))

    def __repr__(self) -> str:
        return f"HpkePrivateKey(kem={self.kem.value!r}, <redacted>)"

    @classmethod
    def generate(cls, kem: Kem = Kem.X25519) -> HpkePrivateKey:
        if kem is Kem.X25519:
            return cls(kem, x25519.X25519PrivateKey.generate().private_bytes_raw())
        seed = mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
        return cls(kem, seed + x25519.X25519PrivateKey.generate().private_bytes_raw())


def fingerprint(identity_public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw identity key as 16 colon-separated groups of 4 hex.

    This is what an operator reads off the runner (``runner keys``) and
    gives to clients to pin, out of band of the control plane.
    """
    digest = hashlib.sha256(identity_public_key.public_bytes_raw()).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 64, 4))


def normalize_fingerprint(pin: str) -> str:
    """The canonical form of a pin typed with any case, spaces, colons or dashes."""
    if not isinstance(pin, str) or len(pin) > 200:
        raise MalformedError("fingerprint: expected a string")
    digits = "".join(ch for ch in pin.lower() if ch not in " :-\t\n")
    if len(digits) != 64 or any(ch not in "0123456789abcdef" for ch in digits):
        raise MalformedError("fingerprint: expected 64 hex digits (SHA-256)")
    return ":".join(digits[i : i + 4] for i in range(0, 64, 4))


@dataclass(frozen=True, repr=False)
class RunnerKeys:
    """A runner's private keys; generated on first start, kept in the state dir."""

    identity: Ed25519PrivateKey
    hpke_key: HpkePrivateKey

    def __repr__(self) -> str:
        return f"RunnerKeys(fingerprint={self.fingerprint!r}, kem={self.kem.value!r})"

    @classmethod
    def generate(cls, kem: Kem = Kem.X25519) -> RunnerKeys:
        return cls(Ed25519PrivateKey.generate(), HpkePrivateKey.generate(kem))

    @property
    def kem(self) -> Kem:
        return self.hpke_key.kem

    @property
    def identity_public(self) -> Ed25519PublicKey:
        return self.identity.public_key()

    @property
    def hpke_public(self) -> HpkePublicKey:
        return self.hpke_key.public

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity_public)

    def dump(self) -> str:
        """Serialize both private keys (raw, base64url) as one JSON line."""
        doc = {
            "v": _KEY_FILE_VERSION,
            "identity": b64e(self.identity.private_bytes_raw()),
            "kem": self.kem.value,
            "hpke": b64e(self.hpke_key.raw),
        }
        return canonical_json(doc).decode("ascii")

    @classmethod
    def load(cls, text: str | bytes) -> RunnerKeys:
        doc = loads_strict(to_text(text, "key file", _MAX_KEY_FILE_CHARS), "key file")
        if set(doc) != {"v", "identity", "kem", "hpke"}:
            raise MalformedError("key file: expected fields v, identity, kem, hpke")
        if type(doc["v"]) is not int or doc["v"] != _KEY_FILE_VERSION:
            raise UnsupportedVersionError(f"key file: unsupported version {doc['v']!r}")
        seed = b64d(doc["identity"], "identity key")
        if len(seed) != 32:
            raise MalformedError("identity key must be 32 bytes")
        hpke_key = HpkePrivateKey(Kem.parse(doc["kem"]), b64d(doc["hpke"], "HPKE key"))
        return cls(Ed25519PrivateKey.from_private_bytes(seed), hpke_key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`dump` atomically to ``path`` with mode 0600."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            # mkstemp creates the file 0600 whatever the umask; keep it so.
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(self.dump())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RunnerKeys:
        return cls.load(Path(path).read_bytes())
