"""Operator actions shared by the CLI and the API: one implementation each."""

from __future__ import annotations

from control_plane.audit import operator_actor, record_admin
from control_plane.db.engine import Database
from control_plane.store.keys import create_api_key, create_enrollment_token
from control_plane.store.tenants import get_or_create_tenant

__all__ = ["issue_api_key", "issue_enrollment_token"]


async def issue_api_key(db: Database, tenant: str, name: str, admin: bool = False, *,
                        actor: str | None = None) -> tuple[str, str]:
    """Create an API key; returns ``(key_id, secret)``. The secret is not stored."""
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        key, secret = await create_api_key(session, t.id, name, scopes="inference,admin" if admin else "inference")
        await record_admin(session, actor=actor or operator_actor(), action="api_key.create", tenant_id=t.id,
                           target=key.id, details={"name": name, "scopes": key.scopes})
        await session.commit()
        return key.id, secret


async def issue_enrollment_token(db: Database, tenant: str, runner_name: str, ttl_s: int, *,
                                 actor: str | None = None) -> str:
    async with db.session() as session:
        t = await get_or_create_tenant(session, tenant)
        token, secret = await create_enrollment_token(session, t.id, runner_name, ttl_s)
        await record_admin(session, actor=actor or operator_actor(), action="enrollment_token.create",
                           tenant_id=t.id, target=token.id, details={"runner_name": runner_name, "ttl_s": ttl_s})
        await session.commit()
        return secret
