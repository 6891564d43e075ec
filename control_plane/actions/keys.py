"""API keys: create (secret returned once), revoke, set limits."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import ApiKey
from outpost.control_plane.domain_errors import Forbidden, Invalid, NotFound
from outpost.control_plane.model_access import parse_allow_list
from outpost.control_plane.permissions import (
    ROLES,
    SHELL_ROLE,
    check_grant,
    key_role,
    may_grant,
)
from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.store.keys import create_api_key, get_api_key, revoke_api_key
from outpost.control_plane.store.policies import set_key_limits

__all__ = [
    "check_policy",
    "create_key",
    "find_key",
    "revoke_key",
    "set_allowed_models",
    "set_limits",
]

# ``inference`` plus at most one role (``permissions.key_role``); ``admin`` is also
# the legacy scope.
SCOPES = ("inference", *ROLES)


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
    by_role: str | None = SHELL_ROLE,
    allowed_models: list[str] | None = None,
    by_allowed: tuple[str, ...] | None = None,
) -> tuple[ApiKey, str]:
    """A key of ``tenant_id``; returns ``(row, secret)``. The secret is not stored.

    ``by_role`` is the creator's role: a key's role must be one it may grant
    (``permissions.may_grant``). ``extra`` adds door-specific audit details
    (the console's expiry choice, its purpose).
    """
    check_policy(routing_policy)
    _check_rpm(rate_limit_rpm)
    parts = scopes.split(",") if scopes else []
    if not parts or any(s not in SCOPES for s in parts):
        raise Invalid(f"scopes are a comma-separated subset of {', '.join(SCOPES)}", param="scopes")
    if sum(p in ROLES for p in parts) > 1:
        raise Invalid("A key has at most one role.", param="role")
    role = key_role(set(parts))
    if role is not None:
        check_grant(by_role, role)
    models = parse_allow_list(allowed_models) if allowed_models is not None else None
    _check_within(by_allowed, models)
    key, secret = await create_api_key(
        session, tenant_id, name, expires_at=expires_at, scopes=scopes
    )
    if models is not None:
        key.allowed_models = models
        await session.flush()
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
            **({"allowed_models": models} if models is not None else {}),
            **(extra or {}),
        },
    )
    return key, secret


async def revoke_key(
    session: AsyncSession,
    tenant_id: str,
    key_id: str,
    *,
    actor: str,
    by_role: str | None = SHELL_ROLE,
) -> ApiKey:
    """Revoke at once (idempotent: revoking twice keeps the first time).

    Only a key whose role the revoker could have granted: a developer cannot
    lock an owner out by revoking the owner's key.
    """
    key = await find_key(session, tenant_id, key_id)
    _check_over(by_role, key)
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


def _check_within(by_allowed: tuple[str, ...] | None, models: list[str] | None) -> None:
    """A caller whose own key is allow-listed hands on no model beyond its own list: else a
    narrowed key could mint (or turn itself into) one that is not."""
    if by_allowed is None:
        return
    if models is None or not set(models) <= set(by_allowed):
        raise Forbidden(
            "Your key may only call some models: the keys it creates or changes must name only "
            f"entries of its own list ({', '.join(by_allowed) or 'none'}).",
            code="permission_denied",
        )


def _check_over(by_role: str | None, key: ApiKey) -> None:
    role = key_role(set(key.scopes.split(",")))
    if role is not None and not may_grant(by_role, role):
        raise Forbidden(
            f"Your role cannot change a key with the {role!r} role.", code="permission_denied"
        )


async def set_allowed_models(
    session: AsyncSession,
    tenant_id: str,
    key_id: str,
    models: list[str] | None,
    *,
    actor: str,
    by_role: str | None = SHELL_ROLE,
    by_allowed: tuple[str, ...] | None = None,
) -> ApiKey:
    """Replace the key's model allow-list; ``None`` lifts it (every model its tenant can reach)."""
    checked = parse_allow_list(models) if models is not None else None
    _check_within(by_allowed, checked)
    key = await find_key(session, tenant_id, key_id)
    _check_over(by_role, key)
    key.allowed_models = checked
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.API_KEY_MODELS,
        tenant_id=tenant_id,
        target=key.id,
        details={"allowed_models": checked},
    )
    return key
