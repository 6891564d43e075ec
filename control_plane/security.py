"""Secrets: generation, hashing and constant-time verification.

API keys and tokens are high-entropy random strings, so one SHA-256 is a
sound hash for them (a slow password hash buys nothing against 256-bit
secrets and would cost milliseconds on every request). Passwords, which are
low-entropy, use argon2 in the console's auth module.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["ParsedSecret", "hash_secret", "new_secret", "parse_secret", "verify_secret"]

_PREFIX_LEN = 12


@dataclass(frozen=True)
class ParsedSecret:
    kind: str
    prefix: str
    secret: str


def new_secret(kind: str) -> tuple[str, str, str]:
    """Return ``(full_token, prefix, hash)``; only the hash and prefix are stored.

    ``kind`` is a short tag (``sk`` API key, ``et`` enrollment token) that makes
    leaked tokens recognisable by secret scanners.
    """
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return f"op{kind}-{prefix}-{secret}", prefix, hash_secret(secret)


def parse_secret(token: str, kind: str) -> ParsedSecret | None:
    if not token or len(token) > 200:
        return None
    parts = token.split("-", 2)
    if len(parts) != 3 or parts[0] != f"op{kind}" or len(parts[1]) != _PREFIX_LEN:
        return None
    return ParsedSecret(kind=kind, prefix=parts[1], secret=parts[2])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
