"""The routing and limit settings that apply to one API key: the key's, then its tenant's."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import ApiKey, Tenant
from outpost.control_plane.store.pools import usable_pool_ids

__all__ = ["KeyPolicy", "get_key_policy", "set_key_limits", "set_tenant_policy"]


@dataclass(frozen=True)
class KeyPolicy:
    rate_limit_rpm: int | None = None
    # The key's routing policy overrides the tenant's.
    routing_policy: str = "balanced"
    residency: dict[str, list[str]] = field(default_factory=dict)
    tenant_weight: float = 1.0
    # The pools the key's tenant may route to (store.pools.usable_pool_ids).
    pools: frozenset[str] = frozenset()
    # The key's model allow-list (control_plane.model_access); None: every model.
    allowed_models: tuple[str, ...] | None = None
    # Quotas (control_plane.quotas): the key's, then its tenant's; None: none.
    key_tokens_per_minute: int | None = None
    key_tokens_per_day: int | None = None
    max_concurrent: int | None = None
    tenant_tokens_per_minute: int | None = None
    tenant_tokens_per_day: int | None = None


async def get_key_policy(session: AsyncSession, api_key_id: str) -> KeyPolicy | None:
    stmt = (
        select(
            ApiKey.rate_limit_rpm,
            ApiKey.routing_policy,
            Tenant.routing_policy,
            Tenant.residency,
            Tenant.weight,
            ApiKey.tenant_id,
            ApiKey.allowed_models,
            ApiKey.tokens_per_minute,
            ApiKey.tokens_per_day,
            ApiKey.max_concurrent,
            Tenant.tokens_per_minute,
            Tenant.tokens_per_day,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == api_key_id)
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    rpm, key_policy, tenant_policy, residency, weight, tenant_id, allow = row[:7]
    return KeyPolicy(
        rate_limit_rpm=rpm,
        routing_policy=key_policy or tenant_policy or "balanced",
        residency={k: list(v) for k, v in (residency or {}).items()},
        tenant_weight=weight,
        pools=await usable_pool_ids(session, tenant_id),
        allowed_models=tuple(allow) if allow is not None else None,
        key_tokens_per_minute=row[7],
        key_tokens_per_day=row[8],
        max_concurrent=row[9],
        tenant_tokens_per_minute=row[10],
        tenant_tokens_per_day=row[11],
    )


async def set_key_limits(
    session: AsyncSession, key: ApiKey, *, rate_limit_rpm: int | None, routing_policy: str | None
) -> None:
    key.rate_limit_rpm, key.routing_policy = rate_limit_rpm, routing_policy
    await session.flush()


async def set_tenant_policy(
    session: AsyncSession,
    tenant: Tenant,
    *,
    residency: dict[str, list[str]] | None = None,
    routing_policy: str | None = None,
    weight: float | None = None,
) -> None:
    """Change only what is given; ``residency={}`` clears the rules."""
    if residency is not None:
        tenant.residency = residency
    if routing_policy is not None:
        tenant.routing_policy = routing_policy
    if weight is not None:
        tenant.weight = weight
    await session.flush()
