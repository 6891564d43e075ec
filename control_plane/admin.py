"""Operator actions shared by the CLI and the API: one implementation each."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.audit import operator_actor, record_admin
from control_plane.db.engine import Database
from control_plane.db.models import Pool
from control_plane.routing.routing import POLICIES
from control_plane.store.keys import create_api_key, create_enrollment_token
from control_plane.store.policies import set_key_limits, set_tenant_policy
from control_plane.store.pools import DEFAULT_POOL, create_pool, default_pool, get_pool_by_name
from control_plane.store.tenants import get_or_create_tenant

__all__ = ["issue_api_key", "issue_enrollment_token", "parse_residency", "update_tenant"]


def _check_policy(policy: str | None) -> None:
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"routing policy must be one of {', '.join(POLICIES)}, not {policy!r}")


async def issue_api_key(db: Database, tenant: str, name: str, admin: bool = False, *,
                        rate_limit_rpm: int | None = None, routing_policy: str | None = None,
                        actor: str | None = None) -> tuple[str, str]:
    """Create an API key; returns ``(key_id, secret)``. The secret is not stored."""
    _check_policy(routing_policy)
    if rate_limit_rpm is not None and rate_limit_rpm < 1:
        raise ValueError("rate limit must be at least 1 request per minute")
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        key, secret = await create_api_key(session, t.id, name, scopes="inference,admin" if admin else "inference")
        if rate_limit_rpm is not None or routing_policy is not None:
            await set_key_limits(session, key, rate_limit_rpm=rate_limit_rpm, routing_policy=routing_policy)
        await record_admin(session, actor=actor or operator_actor(), action="api_key.create", tenant_id=t.id,
                           target=key.id, details={"name": name, "scopes": key.scopes,
                                                   "rate_limit_rpm": rate_limit_rpm, "routing_policy": routing_policy})
        await session.commit()
        return key.id, secret


def parse_residency(text: str) -> dict[str, list[str]]:
    """``'{"region": ["eu"]}'`` → rules; a bare string value means a one-element list."""
    import json

    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"residency is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError('residency must be an object such as {"region": ["eu"]}')  # noqa: TRY004 - user input
    rules: dict[str, list[str]] = {}
    for label, allowed in raw.items():
        values = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"residency rule {label!r} must be a non-empty list of label values")
        rules[str(label)] = values
    return rules


async def update_tenant(db: Database, tenant: str, *, residency: dict[str, list[str]] | None = None,
                        routing_policy: str | None = None, weight: float | None = None,
                        actor: str | None = None) -> dict[str, Any]:
    """Set a tenant's routing policy, residency rules and fair-share weight; returns them."""
    _check_policy(routing_policy)
    if weight is not None and weight <= 0:
        raise ValueError("weight must be > 0")
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        await set_tenant_policy(session, t, residency=residency, routing_policy=routing_policy, weight=weight)
        await record_admin(session, actor=actor or operator_actor(), action="tenant.update", tenant_id=t.id,
                           target=t.id, details={"residency": residency, "routing_policy": routing_policy,
                                                 "weight": weight})
        await session.commit()
        return {"tenant": t.name, "routing_policy": t.routing_policy, "residency": t.residency, "weight": t.weight}


async def issue_enrollment_token(db: Database, tenant: str, runner_name: str, ttl_s: int, *,
                                 actor: str | None = None, pool: str | None = None,
                                 labels: dict[str, str] | None = None) -> str:
    """A token for ``runner_name``, joining the tenant's pool named ``pool`` (created if new; default: "default")."""
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        pool_row = await (default_pool(session, t.id) if pool in (None, DEFAULT_POOL)
                          else _pool_named(session, t.id, pool))
        token, secret = await create_enrollment_token(session, t.id, runner_name, ttl_s, pool_id=pool_row.id,
                                                      labels=labels)
        await record_admin(session, actor=actor or operator_actor(), action="enrollment_token.create",
                           tenant_id=t.id, target=token.id,
                           details={"runner_name": runner_name, "ttl_s": ttl_s, "pool_id": pool_row.id,
                                    "labels": dict(labels or {})})
        await session.commit()
        return secret


async def _pool_named(session: AsyncSession, tenant_id: str, name: str) -> Pool:
    return await get_pool_by_name(session, tenant_id, name) or await create_pool(session, tenant_id, name)
