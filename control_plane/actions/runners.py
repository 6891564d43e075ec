"""Runners: enrollment tokens, revocation, the owner's settings (labels, price, pool).

Dropping a revoked runner's live connections is the door's, after commit
(``state.hub.disconnect``): the action only writes the row and its event.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.actions.pools import find_pool
from outpost.control_plane.audit import AuditAction, record_admin
from outpost.control_plane.db.models import EnrollmentToken, Runner
from outpost.control_plane.domain_errors import Invalid, NotFound
from outpost.control_plane.store.changes import mark_key_changed
from outpost.control_plane.store.keys import create_enrollment_token
from outpost.control_plane.store.pools import (
    DEFAULT_POOL,
    create_pool,
    default_pool,
    get_pool_by_name,
)
from outpost.control_plane.store.runners import get_runner, revoke_runner, update_runner

__all__ = ["enroll_runner", "find_runner", "revoke", "set_runner_settings"]


async def find_runner(session: AsyncSession, tenant_id: str | None, runner_id: str) -> Runner:
    """The tenant's runner (any tenant's with ``None``: the operator's shell); :class:`NotFound`
    otherwise."""
    runner = await get_runner(session, runner_id, tenant_id=tenant_id)
    if runner is None:
        raise NotFound(f"No runner {runner_id!r} in this tenant.", code="runner_not_found")
    return runner


async def enroll_runner(
    session: AsyncSession,
    tenant_id: str,
    runner_name: str,
    ttl_s: int,
    *,
    actor: str,
    pool: str | None = None,
    create_missing_pool: bool = False,
    labels: Mapping[str, str] | None = None,
) -> tuple[EnrollmentToken, str]:
    """A one-time token for ``runner_name`` joining ``pool`` (id or name; default: the default
    pool).

    A pool that does not exist is :class:`NotFound`, unless ``create_missing_pool`` (the CLI's
    ``--pool``, which creates it). Returns ``(row, secret)``; the secret is not stored.
    """
    if pool is None or pool == DEFAULT_POOL:
        pool_row = await default_pool(session, tenant_id)
    elif create_missing_pool:
        pool_row = await get_pool_by_name(session, tenant_id, pool) or await create_pool(
            session, tenant_id, pool
        )
    else:
        pool_row = await find_pool(session, tenant_id, pool)
    token, secret = await create_enrollment_token(
        session, tenant_id, runner_name, ttl_s, pool_id=pool_row.id, labels=dict(labels or {})
    )
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.ENROLLMENT_TOKEN_CREATE,
        tenant_id=tenant_id,
        target=token.id,
        details={
            "runner_name": runner_name,
            "ttl_s": ttl_s,
            "pool_id": pool_row.id,
            "labels": dict(labels or {}),
        },
    )
    return token, secret


async def revoke(
    session: AsyncSession, tenant_id: str | None, runner_id: str, *, actor: str
) -> Runner:
    """Revoke a runner's identity: its reconnects fail the handshake once committed."""
    runner = await find_runner(session, tenant_id, runner_id)
    await revoke_runner(session, runner)
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.RUNNER_REVOKE,
        tenant_id=runner.tenant_id,
        target=runner_id,
        details={"name": runner.name},
    )
    return runner


async def set_runner_settings(
    session: AsyncSession,
    runner: Runner,
    *,
    actor: str,
    labels: dict[str, str] | None = None,
    usd_per_hour: float | None = None,
    pool: str | None = None,
) -> dict[str, object]:
    """The owner's decisions about a runner: residency labels, price (0-1000 $/h), pool (id or
    name).

    Audited as ``runner.update``; on commit every replica re-reads the runner's row
    (``services.owner_settings``). Returns the changes as audited.
    """
    pool_id = (await find_pool(session, runner.tenant_id, pool)).id if pool is not None else None
    try:
        await update_runner(
            session, runner, labels=labels, usd_per_hour=usd_per_hour, pool_id=pool_id
        )
    except ValueError as exc:
        raise Invalid(str(exc), param="usd_per_hour") from None
    changes: dict[str, object] = {
        k: v
        for k, v in (("labels", labels), ("usd_per_hour", usd_per_hour), ("pool_id", pool_id))
        if v is not None
    }
    await record_admin(
        session,
        actor=actor,
        action=AuditAction.RUNNER_UPDATE,
        tenant_id=runner.tenant_id,
        target=runner.id,
        details={"name": runner.name, **changes},
    )
    mark_key_changed(session, tenant_ids=[runner.tenant_id])
    return changes
