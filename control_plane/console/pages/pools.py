"""Pools: the tenant's runner pools, the grants that share them (outgoing and incoming), refusing
shared pools.

Writes go through ``control_plane.actions.pools``, as the API's and the CLI's do.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select

from outpost.control_plane.actions.pools import (
    add_pool,
    find_pool,
    give_grant,
    set_refuse_shared,
    take_back_grant,
)
from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.api.errors import http_status
from outpost.control_plane.api.pools import grant_out
from outpost.control_plane.console.deps import ConsoleUser, PoolsPostDep, ViewUserDep, render
from outpost.control_plane.db.models import Runner, Tenant
from outpost.control_plane.domain_errors import DomainError
from outpost.control_plane.state import AppState
from outpost.control_plane.store.pools import default_pool, list_grants, list_pools

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


async def _page(
    request: Request, state: AppState, user: ConsoleUser, *, status: int = 200, **extra: Any
) -> Response:
    async with state.db.session() as session:
        await default_pool(session, user.tenant_id)
        pools = await list_pools(session, user.tenant_id)
        counts = dict(
            (
                await session.execute(
                    select(Runner.pool_id, func.count())
                    .where(Runner.tenant_id == user.tenant_id, Runner.revoked_at.is_(None))
                    .group_by(Runner.pool_id)
                )
            ).all()
        )
        tenant = await session.get(Tenant, user.tenant_id)
        assert tenant is not None
        rows = await list_grants(session, None if tenant.platform_operator else user.tenant_id)
        grants = [grant_out(g, p, user.tenant_id) for g, p in rows]
        names = dict(
            (
                await session.execute(
                    select(Tenant.id, Tenant.name).where(
                        Tenant.id.in_(
                            {g.owner_tenant_id for g in grants}
                            | {g.grantee_tenant_id for g in grants}
                        )
                    )
                )
            ).all()
        )
        await session.commit()
    return render(
        request,
        "pools.html",
        user,
        status=status,
        active="/pools",
        pools=pools,
        counts=counts,
        grants=grants,
        names=names,
        refuse=tenant.refuse_shared_pools,
        operator=tenant.platform_operator,
        **extra,
    )


@router.get("/pools")
async def pools_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return await _page(request, state, user)


async def _act(request: Request, state: AppState, post: Any, notice: str, action: Any) -> Response:
    """Run ``action(session, tenant)`` and commit; a refusal re-renders the page with its
    message."""
    try:
        async with state.db.session() as session:
            tenant = await session.get(Tenant, post.user.tenant_id)
            await action(session, tenant)
            await session.commit()
    except DomainError as exc:
        return await _page(
            request, state, post.user, status=http_status(exc), pool_error=exc.message
        )
    return RedirectResponse(f"/pools?notice={notice}", status_code=303)


@router.post("/pools")
async def create(request: Request, state: AppStateDep, post: PoolsPostDep) -> Response:
    name = post.form.get("name", "").strip()
    if not name or len(name) > 200:
        return await _page(
            request,
            state,
            post.user,
            status=400,
            pool_error="Give the pool a name (1 to 200 characters).",
        )
    return await _act(
        request,
        state,
        post,
        "pool_created",
        lambda s, t: add_pool(s, t.id, name, actor=post.user.actor),
    )


@router.post("/pools/grant")
async def grant(request: Request, state: AppStateDep, post: PoolsPostDep) -> Response:
    pool, grantee = post.form.get("pool", "").strip(), post.form.get("tenant", "").strip()
    if not pool or not grantee:
        return await _page(
            request, state, post.user, status=400, pool_error="Choose a pool and name a tenant."
        )

    async def action(session: Any, tenant: Tenant) -> None:
        row = await find_pool(session, tenant.id, pool)
        await give_grant(session, tenant, row, grantee, actor=post.user.actor)

    return await _act(request, state, post, "pool_granted", action)


@router.post("/pools/grants/{grant_id}/revoke")
async def revoke(
    grant_id: str, request: Request, state: AppStateDep, post: PoolsPostDep
) -> Response:
    return await _act(
        request,
        state,
        post,
        "grant_revoked",
        lambda s, t: take_back_grant(s, t, grant_id, actor=post.user.actor),
    )


@router.post("/pools/sharing")
async def sharing(request: Request, state: AppStateDep, post: PoolsPostDep) -> Response:
    refuse = post.form.get("refuse_shared_pools") == "on"
    return await _act(
        request,
        state,
        post,
        "sharing_saved",
        lambda s, t: set_refuse_shared(s, t, refuse, actor=post.user.actor),
    )
