"""Signing in: password check, lockout, single sign-on, and an audit event for every attempt."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import record_login
from outpost.control_plane.audit.chain import append_event
from outpost.control_plane.audit.events import actor_for_user
from outpost.control_plane.console.config import ConsoleSettings
from outpost.control_plane.console.oidc import Identity, OidcRefused
from outpost.control_plane.console.passwords import (
    hash_password,
    needs_rehash,
    verify_password_async,
)
from outpost.control_plane.db.models import User
from outpost.control_plane.store.tenants import get_tenant_by_name
from outpost.control_plane.store.users import (
    as_utc,
    create_user,
    get_user_by_email,
    is_locked,
    note_failed_login,
    note_login,
    set_role,
)

__all__ = [
    "SSO_PASSWORD_PREFIX",
    "LoginOutcome",
    "attempt_login",
    "record_sso_failure",
    "refuse_local_login",
    "sso_login",
]

# The password hash of a user made by single sign-on: not an argon2 hash, so no password matches it.
SSO_PASSWORD_PREFIX = "!sso:"


@dataclass(frozen=True)
class LoginOutcome:
    user: User | None
    error: Literal["invalid", "locked"] | None = None
    locked_until: datetime | None = None


async def attempt_login(
    session: AsyncSession,
    email: str,
    password: str,
    *,
    settings: ConsoleSettings,
    now: datetime,
    remote_addr: str | None,
) -> LoginOutcome:
    """Check a sign-in attempt and record it in the audit log; the caller commits.

    A locked account is refused before its password is checked, so guessing
    goes no further while the lock holds. An unknown address costs the same
    argon2 work as a known one.
    """
    email = email.strip().lower()[:320]
    user = await get_user_by_email(session, email)
    if user is not None and is_locked(user, now):
        await record_login(
            session,
            success=False,
            email=email,
            tenant_id=user.tenant_id,
            user_id=user.id,
            reason="locked",
            remote_addr=remote_addr,
        )
        return LoginOutcome(None, "locked", as_utc(user.locked_until))
    ok = await verify_password_async(password, user.password_hash if user is not None else None)
    if user is None:
        await record_login(
            session, success=False, email=email, reason="unknown_user", remote_addr=remote_addr
        )
        return LoginOutcome(None, "invalid")
    if not ok:
        locked = await note_failed_login(
            session,
            user,
            now=now,
            attempts=settings.lockout_attempts,
            lockout=timedelta(seconds=settings.lockout_s),
        )
        await record_login(
            session,
            success=False,
            email=email,
            tenant_id=user.tenant_id,
            user_id=user.id,
            reason="locked_out" if locked else "bad_password",
            remote_addr=remote_addr,
        )
        return (
            LoginOutcome(None, "locked", user.locked_until)
            if locked
            else LoginOutcome(None, "invalid")
        )
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    await note_login(session, user)
    await record_login(
        session,
        success=True,
        email=email,
        tenant_id=user.tenant_id,
        user_id=user.id,
        remote_addr=remote_addr,
    )
    return LoginOutcome(user)


async def refuse_local_login(session: AsyncSession, email: str, *, remote_addr: str | None) -> None:
    """Password sign-in is switched off (``OUTPOST_OIDC_ALLOW_LOCAL_PASSWORDS=false``): audit
    the attempt."""
    user = await get_user_by_email(session, email)
    await record_login(
        session,
        success=False,
        email=email.strip().lower()[:320],
        tenant_id=user.tenant_id if user else None,
        user_id=user.id if user else None,
        reason="local_passwords_disabled",
        remote_addr=remote_addr,
    )


async def _record_sso(
    session: AsyncSession,
    *,
    success: bool,
    email: str | None,
    subject: str | None,
    tenant_id: str | None,
    user_id: str | None,
    reason: str | None,
    remote_addr: str | None,
    issuer: str,
) -> None:
    # The same event types as password sign-in, naming the person by the provider's subject and
    # email.
    await append_event(
        session,
        type="auth.login.success" if success else "auth.login.failure",
        actor=actor_for_user(user_id) if user_id else "anonymous",
        tenant_id=tenant_id,
        data={
            "email": email,
            "user_id": user_id,
            "reason": reason,
            "remote_addr": remote_addr,
            "method": "oidc",
            "oidc_issuer": issuer,
            "oidc_subject": subject,
        },
    )


async def record_sso_failure(
    session: AsyncSession, refused: OidcRefused, *, remote_addr: str | None, issuer: str
) -> None:
    user = await get_user_by_email(session, refused.email) if refused.email else None
    await _record_sso(
        session,
        success=False,
        email=refused.email,
        subject=refused.subject,
        tenant_id=user.tenant_id if user else None,
        user_id=user.id if user else None,
        reason=refused.reason,
        remote_addr=remote_addr,
        issuer=issuer,
    )


async def sso_login(
    session: AsyncSession,
    identity: Identity,
    *,
    now: datetime,
    remote_addr: str | None,
    issuer: str,
) -> User:
    """The console user for a verified identity, made on first sign-in; the caller commits.

    The provider is the authority on the role: it is set again at every
    sign-in. It is not the authority on moving people between tenants: a
    user who exists in another tenant is refused rather than moved.
    Raises ``OidcRefused`` (after auditing it) for an unknown tenant or a lock.
    """

    async def refuse(reason: str, message: str, user: User | None = None) -> OidcRefused:
        refused = OidcRefused(reason, message, email=identity.email, subject=identity.subject)
        await _record_sso(
            session,
            success=False,
            email=identity.email,
            subject=identity.subject,
            tenant_id=user.tenant_id if user else None,
            user_id=user.id if user else None,
            reason=reason,
            remote_addr=remote_addr,
            issuer=issuer,
        )
        return refused

    tenant = await get_tenant_by_name(session, identity.tenant)
    if tenant is None:
        raise await refuse(
            "unknown_tenant",
            f"Your identity provider puts you in tenant '{identity.tenant}', "
            "which does not exist here. Ask an administrator.",
        )
    user = await get_user_by_email(session, identity.email)
    if user is None:
        # Two first sign-ins of one person at once (two tabs, two replicas): the loser's insert
        # fails inside a savepoint and it signs in as the winner's row.
        try:
            async with session.begin_nested():
                user = await create_user(
                    session,
                    tenant_id=tenant.id,
                    email=identity.email,
                    password_hash=SSO_PASSWORD_PREFIX + secrets.token_hex(16),
                    role=identity.role,
                )
        except IntegrityError:
            user = await get_user_by_email(session, identity.email)
            if user is None:
                raise
    if user.tenant_id != tenant.id:
        raise await refuse(
            "tenant_mismatch",
            "Your console account belongs to another tenant than the one "
            "your identity provider names. Ask an administrator.",
            user,
        )
    if is_locked(user, now):
        raise await refuse("locked", "This account is locked. Ask an admin to unlock it.", user)
    if user.role != identity.role:
        await set_role(session, user, identity.role)
    await note_login(session, user)
    await _record_sso(
        session,
        success=True,
        email=identity.email,
        subject=identity.subject,
        tenant_id=user.tenant_id,
        user_id=user.id,
        reason=None,
        remote_addr=remote_addr,
        issuer=issuer,
    )
    return user
