"""Token quotas and in-flight limits: set a key's, set its tenant's (services/quotas.py enforces).

Each call replaces every quota of its target: ``None`` lifts that one.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.actions.keys import find_key
from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import ApiKey, Tenant
from outpost.control_plane.domain_errors import Invalid

__all__ = ["MAX_CONCURRENT", "MAX_TOKENS", "set_key_quotas", "set_tenant_quotas"]

#: Bounds on what may be stored: large enough for any real deployment, small enough for Lua's
#: and JSON's numbers to stay exact.
MAX_TOKENS = 10**12
MAX_CONCURRENT = 100_000


def _check(name: str, value: int | None, top: int) -> None:
    if value is not None and not 1 <= value <= top:
        raise Invalid(f"{name} must be between 1 and {top}, or null for no limit.", param=name)


async def set_key_quotas(
    session: AsyncSession,
    tenant_id: str,
    key_id: str,
    *,
    actor: str,
    tokens_per_minute: int | None,
    tokens_per_day: int | None,
    max_concurrent: int | None,
) -> ApiKey:
    _check("tokens_per_minute", tokens_per_minute, MAX_TOKENS)
    _check("tokens_per_day", tokens_per_day, MAX_TOKENS)
    _check("max_concurrent", max_concurrent, MAX_CONCURRENT)
    key = await find_key(session, tenant_id, key_id)
    key.tokens_per_minute, key.tokens_per_day = tokens_per_minute, tokens_per_day
    key.max_concurrent = max_concurrent
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.QUOTA_SET,
        tenant_id=tenant_id,
        target=key.id,
        details={
            "scope": "key",
            "tokens_per_minute": tokens_per_minute,
            "tokens_per_day": tokens_per_day,
            "max_concurrent": max_concurrent,
        },
    )
    return key


async def set_tenant_quotas(
    session: AsyncSession,
    tenant: Tenant,
    *,
    actor: str,
    tokens_per_minute: int | None,
    tokens_per_day: int | None,
) -> Tenant:
    _check("tokens_per_minute", tokens_per_minute, MAX_TOKENS)
    _check("tokens_per_day", tokens_per_day, MAX_TOKENS)
    tenant.tokens_per_minute, tenant.tokens_per_day = tokens_per_minute, tokens_per_day
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.QUOTA_SET,
        tenant_id=tenant.id,
        target=tenant.id,
        details={
            "scope": "tenant",
            "tokens_per_minute": tokens_per_minute,
            "tokens_per_day": tokens_per_day,
        },
    )
    return tenant
