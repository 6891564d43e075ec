"""Console users: create, unlock, change role, change password.

Passwords arrive hashed: hashing is deliberately slow and each door chooses
where to spend it (the CLI before opening the database). The password policy
is checked by the door too, before hashing (``console.passwords``).
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import User
from outpost.control_plane.domain_errors import Conflict, Forbidden, Invalid, NotFound
from outpost.control_plane.permissions import ROLES, SHELL_ROLE, Role, check_grant, may_grant
from outpost.control_plane.store.users import (
    create_user,
    get_user,
    get_user_by_email,
    set_password,
    set_role,
    unlock_user,
)

__all__ = [
    "add_user",
    "change_password",
    "change_role",
    "find_user",
    "find_user_by_email",
    "unlock",
]


def _role(role: str) -> Role:
    if role not in ROLES:
        raise Invalid(f"Choose a role: {', '.join(ROLES)}.", param="role")
    return role


async def find_user(session: AsyncSession, tenant_id: str, user_id: str) -> User:
    user = await get_user(session, user_id)
    if user is None or user.tenant_id != tenant_id:
        raise NotFound("No such user in your tenant.", code="user_not_found")
    return user


async def find_user_by_email(session: AsyncSession, email: str) -> User:
    """Any tenant's user by email: the operator's shell only."""
    user = await get_user_by_email(session, email)
    if user is None:
        raise NotFound(f"no user {email!r}", code="user_not_found")
    return user


async def add_user(
    session: AsyncSession,
    tenant_id: str,
    *,
    email: str,
    password_hash: str,
    role: str,
    actor: str,
    by_role: str | None = SHELL_ROLE,
) -> User:
    """``by_role``: the creator's role, which must hold every permission of ``role``."""
    checked = _role(role)
    check_grant(by_role, checked)
    try:
        async with session.begin_nested():
            user = await create_user(
                session, tenant_id=tenant_id, email=email, password_hash=password_hash, role=checked
            )
    except ValueError as exc:  # the email does not parse
        raise Invalid(str(exc), param="email") from None
    except IntegrityError:
        raise Conflict(
            f"A user with email {email.strip()!r} already exists.", code="user_exists"
        ) from None
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.USER_CREATE,
        tenant_id=tenant_id,
        target=user.id,
        details={"email": user.email, "role": checked},
    )
    return user


async def unlock(session: AsyncSession, user: User, *, actor: str) -> None:
    """Clear a lockout (after too many failed sign-ins) before it expires."""
    await unlock_user(session, user)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.USER_UNLOCK,
        tenant_id=user.tenant_id,
        target=user.id,
        details={"email": user.email},
    )


async def change_role(
    session: AsyncSession,
    user: User,
    role: str,
    *,
    actor: str,
    by_user_id: str | None,
    by_role: str | None = SHELL_ROLE,
) -> None:
    """An owner or admin changes another user's role; never their own (a tenant could lose its
    last owner), and only between roles it could grant (an admin neither makes nor unmakes an
    owner)."""
    checked = _role(role)
    if user.id == by_user_id:
        raise Forbidden("Ask another owner or admin to change your own role.")
    check_grant(by_role, checked)
    if not may_grant(by_role, user.role):
        raise Forbidden(
            f"Your role cannot change the role of a user who is {user.role!r}.",
            code="permission_denied",
        )
    await set_role(session, user, checked)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.USER_ROLE,
        tenant_id=user.tenant_id,
        target=user.id,
        details={"email": user.email, "role": checked},
    )


async def change_password(
    session: AsyncSession, user: User, password_hash: str, *, actor: str
) -> None:
    """Replace the password; every session that carried the old one's fingerprint ends."""
    await set_password(session, user, password_hash)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.USER_PASSWORD,
        tenant_id=user.tenant_id,
        target=user.id,
        details={"email": user.email},
    )
