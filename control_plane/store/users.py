"""Console users. Functions take a session, never commit, return rows or None.

The store under the console's login (console/auth.py) and the operator writes
(actions/users.py); the roles themselves are ``control_plane.permissions``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Tenant, User, new_id, utcnow
from outpost.control_plane.permissions import Role

__all__ = [
    "as_utc",
    "create_user",
    "get_user",
    "get_user_by_email",
    "is_locked",
    "list_users",
    "normalize_email",
    "note_failed_login",
    "note_login",
    "set_password",
    "set_role",
    "tenant_of",
    "unlock_user",
]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def normalize_email(email: str) -> str:
    """Lower-cased and trimmed; raises ``ValueError`` for something that is not an address."""
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise ValueError(f"{email!r} is not an email address")
    return value


def as_utc(ts: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone=True columns.
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=utcnow().tzinfo)
    return ts


def is_locked(user: User, now: datetime) -> bool:
    until = as_utc(user.locked_until)
    return until is not None and until > now


async def create_user(
    session: AsyncSession, *, tenant_id: str, email: str, password_hash: str, role: Role
) -> User:
    user = User(
        id=new_id("usr"),
        tenant_id=tenant_id,
        email=normalize_email(email),
        password_hash=password_hash,
        role=role,
    )
    session.add(user)
    await session.flush()
    return user


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    try:
        value = normalize_email(email)
    except ValueError:
        return None
    return (await session.execute(select(User).where(User.email == value))).scalar_one_or_none()


async def list_users(session: AsyncSession, tenant_id: str | None = None) -> list[User]:
    stmt = select(User).order_by(User.email)
    if tenant_id is not None:
        stmt = stmt.where(User.tenant_id == tenant_id)
    return list((await session.execute(stmt)).scalars())


async def tenant_of(session: AsyncSession, user: User) -> Tenant:
    tenant = await session.get(Tenant, user.tenant_id)
    assert tenant is not None  # foreign key, cascade on delete
    return tenant


async def note_failed_login(
    session: AsyncSession, user: User, *, now: datetime, attempts: int, lockout: timedelta
) -> bool:
    """Count one failure; lock the account when ``attempts`` are reached. Returns whether it is now
    locked.

    The counter moves in one UPDATE, so concurrent guesses cannot each read the
    old count and slip past the limit.
    """
    stmt = (
        update(User)
        .where(User.id == user.id)
        .values(failed_logins=User.failed_logins + 1)
        .returning(User.failed_logins)
        .execution_options(synchronize_session=False)
    )
    failures = (await session.execute(stmt)).scalar_one()
    if failures < attempts:
        user.failed_logins = failures
        return False
    await session.execute(
        update(User)
        .where(User.id == user.id)
        .values(failed_logins=0, locked_until=now + lockout)
        .execution_options(synchronize_session=False)
    )
    user.failed_logins, user.locked_until = 0, now + lockout
    return True


async def note_login(session: AsyncSession, user: User) -> None:
    user.failed_logins, user.locked_until = 0, None
    await session.flush()


async def unlock_user(session: AsyncSession, user: User) -> None:
    await note_login(session, user)


async def set_password(session: AsyncSession, user: User, password_hash: str) -> None:
    user.password_hash = password_hash
    await session.flush()


async def set_role(session: AsyncSession, user: User, role: Role) -> None:
    user.role = role
    await session.flush()
