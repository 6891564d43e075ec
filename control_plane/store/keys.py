"""API keys and enrollment tokens: created with the secret shown once, stored hashed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import ApiKey, EnrollmentToken, new_id, utcnow
from outpost.control_plane.security import new_secret, parse_secret, verify_secret

__all__ = [
    "authenticate_api_key",
    "consume_enrollment_token",
    "create_api_key",
    "create_enrollment_token",
    "get_api_key",
    "list_api_keys",
    "revoke_api_key",
]


def _aware(ts: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone=True columns.
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=utcnow().tzinfo)
    return ts


async def create_api_key(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    expires_at: datetime | None = None,
    scopes: str = "inference",
) -> tuple[ApiKey, str]:
    token, prefix, digest = new_secret("sk")
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant_id,
        name=name,
        prefix=prefix,
        secret_hash=digest,
        expires_at=expires_at,
        scopes=scopes,
    )
    session.add(key)
    await session.flush()
    return key, token


async def authenticate_api_key(session: AsyncSession, token: str) -> ApiKey | None:
    parsed = parse_secret(token, "sk")
    if parsed is None:
        return None
    key = (
        await session.execute(select(ApiKey).where(ApiKey.prefix == parsed.prefix))
    ).scalar_one_or_none()
    if key is None or not verify_secret(parsed.secret, key.secret_hash):
        return None
    now = utcnow()
    if key.revoked_at is not None or ((exp := _aware(key.expires_at)) is not None and exp <= now):
        return None
    return key


async def create_enrollment_token(
    session: AsyncSession,
    tenant_id: str,
    runner_name: str,
    ttl_s: int,
    *,
    pool_id: str | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[EnrollmentToken, str]:
    """``pool_id`` (the tenant's; ``None``: its default pool) and ``labels`` are what the runner
    gets."""
    token, prefix, digest = new_secret("et")
    row = EnrollmentToken(
        id=new_id("enr"),
        tenant_id=tenant_id,
        runner_name=runner_name,
        pool_id=pool_id,
        labels=dict(labels or {}),
        prefix=prefix,
        secret_hash=digest,
        expires_at=utcnow() + timedelta(seconds=ttl_s),
    )
    session.add(row)
    await session.flush()
    return row, token


async def consume_enrollment_token(session: AsyncSession, token: str) -> EnrollmentToken | None:
    """Mark a valid, unexpired, unused token used and return it; else ``None``."""
    parsed = parse_secret(token, "et")
    if parsed is None:
        return None
    stmt = select(EnrollmentToken).where(EnrollmentToken.prefix == parsed.prefix).with_for_update()
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None or not verify_secret(parsed.secret, row.secret_hash):
        return None
    expires_at = _aware(row.expires_at)  # an enrollment token always has one
    if row.used_at is not None or (expires_at is not None and expires_at <= utcnow()):
        return None
    # Compare-and-set: SQLite ignores FOR UPDATE, so of two registrations racing
    # on one token only the UPDATE that still finds it unused may spend it.
    spent = await session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if cast("CursorResult[Any]", spent).rowcount != 1:  # an UPDATE's result is a cursor result
        return None
    return row


async def list_api_keys(session: AsyncSession, tenant_id: str) -> list[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    return list((await session.execute(stmt)).scalars())


async def get_api_key(session: AsyncSession, key_id: str, tenant_id: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def revoke_api_key(session: AsyncSession, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    await session.flush()
