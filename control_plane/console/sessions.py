"""Signed console sessions and CSRF tokens.

A session is a cookie holding ``v1.<payload>.<HMAC-SHA256>``: the user id, a
random session id, issue and expiry times, and a fingerprint of the user's
password hash (changing the password ends every session). The cookie is
HttpOnly and SameSite=Strict; nothing in it is secret, but nothing in it can
be forged without the console key.

CSRF tokens are synchronizer tokens derived from the session id (HMAC), so
they need no storage and die with the session. Before sign-in, the login form
is protected by a random ``outpost_login`` cookie and a token derived from it.

Sign-out denies the session id in this process until it would have expired.
Replicas do not share that list: a copied cookie stays valid elsewhere until
its expiry (``OUTPOST_CONSOLE_SESSION_TTL_S``). Server-side sessions would
need a table; the signed cookie keeps the console migration-free.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "ConsoleKey",
    "SessionClaims",
    "load_or_create_key",
    "password_fingerprint",
]

SESSION_COOKIE = "outpost_session"
LOGIN_COOKIE = "outpost_login"


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def load_or_create_key(path: Path) -> bytes:
    """32 random bytes in ``path`` (mode 0600), created on first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raw = path.read_bytes().strip()
        key = bytes.fromhex(raw.decode())
        if len(key) < 32:
            raise ValueError(
                f"{path}: the console key must be at least 32 bytes (64 hex digits)"
            ) from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


@dataclass(frozen=True)
class SessionClaims:
    user_id: str
    session_id: str
    issued_at: int
    expires_at: int
    password_fp: str


class ConsoleKey:
    """Signs and checks sessions and CSRF tokens; remembers signed-out sessions."""

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._clock = clock
        self._denied: dict[str, float] = {}

    def _mac(self, purpose: str, message: str) -> str:
        return _b64e(hmac.new(self._key, f"{purpose}|{message}".encode(), hashlib.sha256).digest())

    # --- sessions -------------------------------------------------------

    def issue(self, user_id: str, password_hash: str, ttl_s: int) -> tuple[str, SessionClaims]:
        now = int(self._clock())
        claims = SessionClaims(
            user_id=user_id,
            session_id=secrets.token_urlsafe(16),
            issued_at=now,
            expires_at=now + ttl_s,
            password_fp=password_fingerprint(password_hash),
        )
        payload = _b64e(
            json.dumps(
                {
                    "u": claims.user_id,
                    "s": claims.session_id,
                    "i": claims.issued_at,
                    "e": claims.expires_at,
                    "p": claims.password_fp,
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"v1.{payload}.{self._mac('session', payload)}", claims

    def read(self, token: str | None) -> SessionClaims | None:
        """The claims of a well-signed, unexpired, not signed-out session; else ``None``."""
        if not token or len(token) > 1024:
            return None
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "v1":
            return None
        _, payload, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            raw = json.loads(_b64d(payload))
            claims = SessionClaims(
                user_id=str(raw["u"]),
                session_id=str(raw["s"]),
                issued_at=int(raw["i"]),
                expires_at=int(raw["e"]),
                password_fp=str(raw["p"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if claims.expires_at <= self._clock() or claims.session_id in self._denied:
            return None
        return claims

    def deny(self, claims: SessionClaims) -> None:
        now = self._clock()
        self._denied = {sid: exp for sid, exp in self._denied.items() if exp > now}
        self._denied[claims.session_id] = claims.expires_at

    # --- CSRF -----------------------------------------------------------

    def csrf_token(self, session_id: str) -> str:
        return self._mac("csrf", session_id)

    def check_csrf(self, session_id: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session_id))

    def login_token(self, nonce: str) -> str:
        return self._mac("login", nonce)

    def check_login_token(self, nonce: str | None, token: str | None) -> bool:
        return (
            bool(nonce)
            and bool(token)
            and hmac.compare_digest(str(token), self.login_token(str(nonce)))
        )

    # --- other short-lived signed values (the single sign-on flow's cookie) ---

    def seal(self, purpose: str, text: str) -> str:
        payload = _b64e(text.encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def unseal(self, purpose: str, token: str | None) -> str | None:
        """The text of a value ``seal`` made for ``purpose``; ``None`` if it was not."""
        if not token or len(token) > 4096 or token.count(".") != 1:
            return None
        payload, mac = token.split(".")
        if not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        try:
            return _b64d(payload).decode()
        except ValueError:
            return None
