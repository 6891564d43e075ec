"""Tenants: routing policy, residency rules, fair-share weight, the platform operator mark."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.actions.keys import check_policy
from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import Tenant
from outpost.control_plane.domain_errors import Invalid
from outpost.control_plane.store.policies import set_tenant_policy

__all__ = ["parse_residency", "set_platform_operator", "update_tenant"]


def parse_residency(text: str) -> dict[str, list[str]]:
    """``'{"region": ["eu"]}'`` → rules; a bare string value means a one-element list."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise Invalid(f"residency is not JSON: {exc}", param="residency") from None
    if not isinstance(raw, dict):
        raise Invalid('residency must be an object such as {"region": ["eu"]}', param="residency")
    rules: dict[str, list[str]] = {}
    for label, allowed in raw.items():
        values = [allowed] if isinstance(allowed, str) else allowed
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) and v for v in values)
        ):
            raise Invalid(
                f"residency rule {label!r} must be a non-empty list of label values",
                param="residency",
            )
        rules[str(label)] = values
    return rules


async def update_tenant(
    session: AsyncSession,
    tenant: Tenant,
    *,
    actor: str,
    residency: dict[str, list[str]] | None = None,
    routing_policy: str | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    """Set a tenant's routing policy, residency rules and fair-share weight; returns them."""
    check_policy(routing_policy)
    if weight is not None and weight <= 0:
        raise Invalid("weight must be > 0", param="weight")
    await set_tenant_policy(
        session, tenant, residency=residency, routing_policy=routing_policy, weight=weight
    )
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.TENANT_UPDATE,
        tenant_id=tenant.id,
        target=tenant.id,
        details={"residency": residency, "routing_policy": routing_policy, "weight": weight},
    )
    return {
        "tenant": tenant.name,
        "routing_policy": tenant.routing_policy,
        "residency": tenant.residency,
        "weight": tenant.weight,
    }


async def set_platform_operator(
    session: AsyncSession, tenant: Tenant, on: bool, *, actor: str
) -> None:
    """The one role above tenant admin: may grant pools to every tenant, see and revoke any
    grant."""
    tenant.platform_operator = on
    await session.flush()
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.TENANT_PLATFORM_OPERATOR,
        tenant_id=tenant.id,
        target=tenant.id,
        details={"platform_operator": on},
    )
