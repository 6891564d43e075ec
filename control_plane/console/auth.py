"""Signing in: password check, lockout, and an audit event for every attempt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import record_login
from control_plane.console.config import ConsoleSettings
from control_plane.console.passwords import hash_password, needs_rehash, verify_password_async
from control_plane.console.users import (
    as_utc,
    get_user_by_email,
    is_locked,
    note_failed_login,
    note_login,
)
from control_plane.db.models import User

__all__ = ["LoginOutcome", "attempt_login"]


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    error: Literal["invalid", "locked"] | None = None
    locked_until: datetime | None = None


async def attempt_login(session: AsyncSession, email: str, password: str, *, settings: ConsoleSettings,
                        now: datetime, remote_addr: str | None) -> LoginOutcome:
    """Check a sign-in attempt and record it in the audit log; the caller commits.

    A locked account is refused before its password is checked, so guessing
    goes no further while the lock holds. An unknown address costs the same
    argon2 work as a known one.
    """
    email = email.strip().lower()[:320]
    user = await get_user_by_email(session, email)
    if user is not None and is_locked(user, now):
        await record_login(session, success=False, email=email, tenant_id=user.tenant_id, user_id=user.id,
                           reason="locked", remote_addr=remote_addr)
        return LoginOutcome(None, "locked", as_utc(user.locked_until))
    ok = await verify_password_async(password, user.password_hash if user is not None else None)
    if user is None:
        await record_login(session, success=False, email=email, reason="unknown_user", remote_addr=remote_addr)
        return LoginOutcome(None, "invalid")
    if not ok:
        locked = await note_failed_login(session, user, now=now, attempts=settings.lockout_attempts,
                                         lockout=timedelta(seconds=settings.lockout_s))
        await record_login(session, success=False, email=email, tenant_id=user.tenant_id, user_id=user.id,
                           reason="locked_out" if locked else "bad_password", remote_addr=remote_addr)
        return LoginOutcome(None, "locked", user.locked_until) if locked else LoginOutcome(None, "invalid")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    await note_login(session, user)
    await record_login(session, success=True, email=email, tenant_id=user.tenant_id, user_id=user.id,
                       remote_addr=remote_addr)
    return LoginOutcome(user)
