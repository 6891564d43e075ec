"""How the console calls the control plane's own OpenAI API on a user's behalf.

The playground does not hold an API key secret. Each console user has one
internal key, ``console: <email>``, created on first use with the inference
scope only; its secret is discarded at once, so it cannot be used from
outside. Requests are made in-process with that key's identity, so they pass
through the same budget, rate-limit, routing, fair-queueing, cost and audit
path as any client's, and show up under that key in usage. Revoking the key
(on the API keys page) stops the playground for that user until a new one is
made on their next visit.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.actions.keys import create_key
from outpost.control_plane.api.deps import Caller
from outpost.control_plane.console.deps import ConsoleUser
from outpost.control_plane.db.models import ApiKey, Tenant, utcnow
from outpost.control_plane.store.policies import KeyPolicy, get_key_policy
from outpost.control_plane.store.pools import usable_pool_ids

__all__ = ["CONSOLE_KEY_PREFIX", "console_caller", "tenant_policy"]

CONSOLE_KEY_PREFIX = "console: "


async def tenant_policy(session: AsyncSession, tenant_id: str) -> KeyPolicy:
    """The tenant's routing policy, residency and weight (what a key without overrides gets)."""
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        return KeyPolicy()
    return KeyPolicy(
        routing_policy=tenant.routing_policy or "balanced",
        residency={k: list(v) for k, v in (tenant.residency or {}).items()},
        tenant_weight=tenant.weight,
        pools=await usable_pool_ids(session, tenant_id),
    )


async def console_caller(session: AsyncSession, user: ConsoleUser) -> tuple[Caller, KeyPolicy]:
    """The user's internal key as an API caller (created, and audited, on first use); the caller
    commits."""
    name = f"{CONSOLE_KEY_PREFIX}{user.email}"
    now = utcnow()
    stmt = (
        select(ApiKey)
        .where(
            ApiKey.tenant_id == user.tenant_id,
            ApiKey.name == name,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
        .order_by(ApiKey.created_at.desc())
        .limit(1)
    )
    key = (await session.execute(stmt)).scalar_one_or_none()
    if key is None:
        key, _secret = await create_key(
            session,
            user.tenant_id,
            name,
            actor=user.actor,
            scopes="inference",
            extra={"purpose": "console"},
        )
        del _secret  # never stored, never shown: the key is used in-process only
    policy = await get_key_policy(session, key.id) or KeyPolicy()
    return Caller(
        tenant_id=user.tenant_id, api_key_id=key.id, scopes=frozenset({"inference"})
    ), policy
