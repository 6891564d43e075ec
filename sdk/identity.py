"""Ed25519 runner identity: the key a runner proves itself with on every connect."""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["IdentityKey", "b64u_decode", "b64u_encode", "verify_signature"]


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class IdentityKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    @property
    def public_b64(self) -> str:
        return b64u_encode(self._private.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> str:
        return b64u_encode(self._private.sign(message))


def verify_signature(public_b64: str, message: bytes, signature_b64: str) -> bool:
    """True only for a valid signature; malformed keys or signatures are False."""
    try:
        key = Ed25519PublicKey.from_public_bytes(b64u_decode(public_b64))
        key.verify(b64u_decode(signature_b64), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
