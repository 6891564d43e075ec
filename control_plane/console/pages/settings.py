"""Settings: the tenant's routing, residency and weight; its console users; your password; the
deployment."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.actions import users as user_actions
from outpost.control_plane.actions.tenants import parse_residency, update_tenant
from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.api.errors import http_status
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.console.deps import (
    AdminPostDep,
    ConsoleStateDep,
    ConsoleUser,
    PostDep,
    UserDep,
    error_page,
    not_found,
    render,
)
from outpost.control_plane.console.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    verify_password_async,
)
from outpost.control_plane.console.sessions import SESSION_COOKIE
from outpost.control_plane.db.models import Tenant, utcnow
from outpost.control_plane.domain_errors import DomainError, Forbidden, NotFound
from outpost.control_plane.permissions import ROLES, check_grant
from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.state import AppState
from outpost.control_plane.store.users import get_user, is_locked, list_users

router = APIRouter(include_in_schema=False)


async def _page(
    request: Request,
    state: AppState,
    console: Any,
    user: ConsoleUser,
    *,
    status: int = 200,
    **extra: Any,
) -> Response:
    async with state.db.session() as session:
        tenant = await session.get(Tenant, user.tenant_id)
        users = await list_users(session, user.tenant_id)
    return render(
        request,
        "settings.html",
        user,
        active="/settings",
        status=status,
        tenant=tenant,
        users=users,
        roles=ROLES,
        policies=POLICIES,
        residency_json=json.dumps((tenant.residency if tenant is not None else None) or {}),
        audit_key=AuditSigner.from_settings(state.settings).current(),
        settings=state.settings,
        console=console.console,
        locked_ids={u.id for u in users if is_locked(u, utcnow())},
        **extra,
    )


@router.get("/settings")
async def settings_page(
    request: Request, state: AppStateDep, console: ConsoleStateDep, user: UserDep
) -> Response:
    return await _page(request, state, console, user)


@router.post("/settings/tenant")
async def save_tenant(
    request: Request, state: AppStateDep, console: ConsoleStateDep, post: AdminPostDep
) -> Response:
    form = post.form
    try:
        residency = parse_residency(form.get("residency", "").strip() or "{}")
        weight = float(form.get("weight", "1") or 1)
        policy = form.get("routing_policy") or None
        async with state.db.session() as session:
            tenant = await session.get(Tenant, post.user.tenant_id)
            assert tenant is not None  # the signed-in user's tenant
            await update_tenant(
                session,
                tenant,
                residency=residency,
                routing_policy=policy,
                weight=weight,
                actor=post.user.actor,
            )
            await session.commit()
    except ValueError as exc:  # the weight is not a number
        return await _page(request, state, console, post.user, status=400, tenant_error=str(exc))
    except DomainError as exc:
        return await _page(
            request, state, console, post.user, status=http_status(exc), tenant_error=exc.message
        )
    return RedirectResponse("/settings?notice=tenant_saved", status_code=303)


@router.post("/settings/users")
async def add_user(
    request: Request, state: AppStateDep, console: ConsoleStateDep, post: AdminPostDep
) -> Response:
    form = post.form
    role = form.get("role", "viewer")
    try:
        check_grant(post.user.role, role)  # before spending a hash on it
        check_password_policy(form.get("password", ""), console.console.min_password_length)
        async with state.db.session() as session:
            await user_actions.add_user(
                session,
                post.user.tenant_id,
                email=form.get("email", ""),
                password_hash=hash_password(form["password"]),
                role=role,
                actor=post.user.actor,
                by_role=post.user.role,
            )
            await session.commit()
    except PasswordPolicyError as exc:
        return await _page(
            request, state, console, post.user, status=400, user_error=f"Password: {exc}"
        )
    except ValueError as exc:
        return await _page(request, state, console, post.user, status=400, user_error=str(exc))
    except DomainError as exc:
        return await _page(
            request, state, console, post.user, status=http_status(exc), user_error=exc.message
        )
    return RedirectResponse("/settings?notice=user_created", status_code=303)


@router.post("/settings/users/{user_id}/unlock")
async def unlock(
    user_id: str, request: Request, state: AppStateDep, post: AdminPostDep
) -> Response:
    async with state.db.session() as session:
        try:
            target = await user_actions.find_user(session, post.user.tenant_id, user_id)
        except NotFound as exc:
            return not_found(request, post.user, exc.message)
        await user_actions.unlock(session, target, actor=post.user.actor)
        await session.commit()
    return RedirectResponse("/settings?notice=user_unlocked", status_code=303)


@router.post("/settings/users/{user_id}/role")
async def change_role(
    user_id: str, request: Request, state: AppStateDep, post: AdminPostDep
) -> Response:
    role = post.form.get("role", "")
    async with state.db.session() as session:
        try:
            target = await user_actions.find_user(session, post.user.tenant_id, user_id)
            await user_actions.change_role(
                session,
                target,
                role,
                actor=post.user.actor,
                by_user_id=post.user.id,
                by_role=post.user.role,
            )
        except Forbidden as exc:
            return error_page(request, post.user, 400, "Not allowed", exc.message)
        except DomainError:  # no such user, or no such role
            return not_found(request, post.user, "No such user in your tenant.")
        await session.commit()
    return RedirectResponse("/settings?notice=user_role", status_code=303)


@router.post("/settings/password")
async def change_password(
    request: Request, state: AppStateDep, console: ConsoleStateDep, post: PostDep
) -> Response:
    form = post.form
    async with state.db.session() as session:
        me = await get_user(session, post.user.id)
        assert me is not None  # the session was just checked
        if not await verify_password_async(form.get("current_password", ""), me.password_hash):
            return await _page(
                request,
                state,
                console,
                post.user,
                status=400,
                password_error="Your current password is not right.",
            )
        try:
            check_password_policy(form.get("new_password", ""), console.console.min_password_length)
        except PasswordPolicyError as exc:
            return await _page(
                request, state, console, post.user, status=400, password_error=str(exc)
            )
        await user_actions.change_password(
            session, me, hash_password(form["new_password"]), actor=post.user.actor
        )
        await session.commit()
        password_hash = me.password_hash
    # Every other session carried the old password's fingerprint; this one gets a new cookie.
    token, _ = console.key.issue(post.user.id, password_hash, console.console.session_ttl_s)
    response = RedirectResponse("/settings?notice=password_changed", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=console.console.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/",
    )
    return response
