"""Whole operator actions on a :class:`Database`: open a session, run the action, commit.

For the CLI's commands and for tests and benchmarks that set up a stack. The
writes themselves (validation, store, audit) are in :mod:`control_plane.actions`;
these only own the transaction. The actor defaults to the shell's operator.
"""

from __future__ import annotations

from typing import Any

from outpost.control_plane.actions import keys as key_actions
from outpost.control_plane.actions import runners as runner_actions
from outpost.control_plane.actions import tenants as tenant_actions
from outpost.control_plane.actions.tenants import parse_residency
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.db.engine import Database
from outpost.control_plane.store.tenants import get_or_create_tenant

__all__ = ["issue_api_key", "issue_enrollment_token", "parse_residency", "update_tenant"]


async def issue_api_key(
    db: Database,
    tenant: str,
    name: str,
    admin: bool = False,
    *,
    rate_limit_rpm: int | None = None,
    routing_policy: str | None = None,
    actor: str | None = None,
    role: str | None = None,
    allowed_models: list[str] | None = None,
) -> tuple[str, str]:
    """Create an API key in tenant ``tenant`` (created if new); returns ``(key_id, secret)``.

    ``role`` (control_plane.permissions) wins over ``admin``, which is the ``admin`` role.
    """
    role = role or ("admin" if admin else None)
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        key, secret = await key_actions.create_key(
            session,
            t.id,
            name,
            actor=actor or operator_actor(),
            scopes=f"inference,{role}" if role else "inference",
            rate_limit_rpm=rate_limit_rpm,
            routing_policy=routing_policy,
            allowed_models=allowed_models,
        )
        await session.commit()
        return key.id, secret


async def update_tenant(
    db: Database,
    tenant: str,
    *,
    residency: dict[str, list[str]] | None = None,
    routing_policy: str | None = None,
    weight: float | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Set a tenant's routing policy, residency rules and fair-share weight; returns them."""
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        result = await tenant_actions.update_tenant(
            session,
            t,
            actor=actor or operator_actor(),
            residency=residency,
            routing_policy=routing_policy,
            weight=weight,
        )
        await session.commit()
        return result


async def issue_enrollment_token(
    db: Database,
    tenant: str,
    runner_name: str,
    ttl_s: int,
    *,
    actor: str | None = None,
    pool: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    """A token for ``runner_name``, joining the tenant's pool named ``pool`` (created if new;
    default: "default")."""
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        _, secret = await runner_actions.enroll_runner(
            session,
            t.id,
            runner_name,
            ttl_s,
            actor=actor or operator_actor(),
            pool=pool,
            create_missing_pool=True,
            labels=labels,
        )
        await session.commit()
        return secret
