"""Console passwords: argon2id hashes, verified off the event loop.

API keys are high-entropy and use one SHA-256 (``control_plane.security``);
passwords are chosen by people, so they get a slow, memory-hard hash.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "PasswordPolicyError",
    "check_password_policy",
    "hash_password",
    "needs_rehash",
    "verify_password",
    "verify_password_async",
]


class PasswordPolicyError(ValueError):
    pass


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    # argon2id at OWASP's recommended floor (19 MiB, 2 passes, 1 lane): a guess costs an attacker
    # real memory, while a sign-in stays well under a second on a small control-plane host.
    # Stored hashes made with other parameters are upgraded at the next sign-in.
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher().hash("not a real password; spends the time a real check would")


def check_password_policy(password: str, min_length: int) -> None:
    """Length is what matters (NIST SP 800-63B); no composition rules."""
    if len(password) < min_length:
        raise PasswordPolicyError(f"Use at least {min_length} characters.")
    if len(password) > 1024:
        raise PasswordPolicyError("Use at most 1024 characters.")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(password: str, stored_hash: str | None) -> bool:
    """Constant work whether or not the user exists: an unknown user is checked against a dummy
    hash."""
    try:
        _hasher().verify(stored_hash or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return stored_hash is not None


async def verify_password_async(password: str, stored_hash: str | None) -> bool:
    # argon2 takes tens of milliseconds of CPU: keep the event loop serving streams meanwhile.
    return await asyncio.to_thread(verify_password, password, stored_hash)


def needs_rehash(stored_hash: str) -> bool:
    return _hasher().check_needs_rehash(stored_hash)
