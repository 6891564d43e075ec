"""API keys: create (secret returned once), revoke, set limits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import ApiKey
from outpost.control_plane.domain_errors import Invalid, NotFound
from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.store.keys import create_api_key, get_api_key, revoke_api_key
from outpost.control_plane.store.policies import set_key_limits

__all__ = ["check_policy", "create_key", "find_key", "revoke_key", "set_limits"]

SCOPES = ("inference", "admin")


def check_policy(policy: str | None) -> None:
    if policy is not None and policy not in POLICIES:
        raise Invalid(
            f"routing policy must be one of {', '.join(POLICIES)}, not {policy!r}",
            param="routing_policy",
        )


def _check_rpm(rate_limit_rpm: int | None) -> None:
    if rate_limit_rpm is not None and rate_limit_rpm < 1:
        raise Invalid("rate limit must be at least 1 request per minute", param="rate_limit_rpm")


async def find_key(session: AsyncSession, tenant_id: str, key_id: str) -> ApiKey:
    """The tenant's key ``key_id``; :class:`NotFound` otherwise (another tenant's key included)."""
    key = await get_api_key(session, key_id, tenant_id)
    if key is None:
        raise NotFound(f"No API key {key_id!r} in this tenant.", code="api_key_not_found")
    return key


async def create_key(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    actor: str,
    scopes: str = "inference",
    expires_at: datetime | None = None,
    rate_limit_rpm: int | None = None,
    routing_policy: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ApiKey, str]:
    """A key of ``tenant_id``; returns ``(row, secret)``. The secret is not stored.

    ``extra`` adds door-specific audit details (the console's expiry choice, its purpose).
    """
    check_policy(routing_policy)
    _check_rpm(rate_limit_rpm)
    if not scopes or any(s not in SCOPES for s in scopes.split(",")):
        raise Invalid(f"scopes are a comma-separated subset of {', '.join(SCOPES)}", param="scopes")
    key, secret = await create_api_key(
        session, tenant_id, name, expires_at=expires_at, scopes=scopes
    )
    if rate_limit_rpm is not None or routing_policy is not None:
        await set_key_limits(
            session, key, rate_limit_rpm=rate_limit_rpm, routing_policy=routing_policy
        )
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.API_KEY_CREATE,
        tenant_id=tenant_id,
        target=key.id,
        details={
            "name": name,
            "scopes": scopes,
            "rate_limit_rpm": rate_limit_rpm,
            "routing_policy": routing_policy,
            **(extra or {}),
        },
    )
    return key, secret


async def revoke_key(session: AsyncSession, tenant_id: str, key_id: str, *, actor: str) -> ApiKey:
    """Revoke at once (idempotent: revoking twice keeps the first time)."""
    key = await find_key(session, tenant_id, key_id)
    await revoke_api_key(session, key)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.API_KEY_REVOKE,
        tenant_id=tenant_id,
        target=key.id,
        details={"name": key.name},
    )
    return key


async def set_limits(
    session: AsyncSession,
    tenant_id: str,
    key_id: str,
    *,
    actor: str,
    rate_limit_rpm: int | None,
    routing_policy: str | None,
) -> ApiKey:
    check_policy(routing_policy)
    _check_rpm(rate_limit_rpm)
    key = await find_key(session, tenant_id, key_id)
    await set_key_limits(session, key, rate_limit_rpm=rate_limit_rpm, routing_policy=routing_policy)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.API_KEY_LIMITS,
        tenant_id=tenant_id,
        target=key.id,
        details={"rate_limit_rpm": rate_limit_rpm, "routing_policy": routing_policy},
    )
    return key
