"""Settings: the tenant's routing, residency and weight; its console users; your password; the deployment."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.exc import IntegrityError

from control_plane.admin import parse_residency, update_tenant
from control_plane.api.deps import AppStateDep
from control_plane.audit import record_admin
from control_plane.audit.keys import AuditSigner
from control_plane.console.deps import (
    AdminPostDep,
    ConsoleStateDep,
    ConsoleUser,
    PostDep,
    UserDep,
    error_page,
    not_found,
    render,
)
from control_plane.console.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
    verify_password_async,
)
from control_plane.console.sessions import SESSION_COOKIE
from control_plane.console.users import (
    ROLES,
    create_user,
    get_user,
    is_locked,
    list_users,
    set_password,
    set_role,
    unlock_user,
)
from control_plane.db.models import Tenant, utcnow
from control_plane.routing.routing import POLICIES
from control_plane.state import AppState

router = APIRouter(include_in_schema=False)


async def _page(request: Request, state: AppState, console: Any, user: ConsoleUser, *, status: int = 200,
                **extra: Any) -> Response:
    async with state.db.session() as session:
        tenant = await session.get(Tenant, user.tenant_id)
        users = await list_users(session, user.tenant_id)
    return render(request, "settings.html", user, active="/settings", status=status, tenant=tenant, users=users,
                  roles=ROLES, policies=POLICIES, residency_json=json.dumps(tenant.residency or {}),
                  audit_key=AuditSigner.from_settings(state.settings).current(), settings=state.settings,
                  console=console.console, locked_ids={u.id for u in users if is_locked(u, utcnow())}, **extra)


@router.get("/settings")
async def settings_page(request: Request, state: AppStateDep, console: ConsoleStateDep, user: UserDep) -> Response:
    return await _page(request, state, console, user)


@router.post("/settings/tenant")
async def save_tenant(request: Request, state: AppStateDep, console: ConsoleStateDep, post: AdminPostDep) -> Response:
    form = post.form
    try:
        residency = parse_residency(form.get("residency", "").strip() or "{}")
        weight = float(form.get("weight", "1") or 1)
        policy = form.get("routing_policy") or None
        await update_tenant(state.db, post.user.tenant_name, residency=residency, routing_policy=policy,
                            weight=weight, actor=post.user.actor)
    except ValueError as exc:
        return await _page(request, state, console, post.user, status=400, tenant_error=str(exc))
    return RedirectResponse("/settings?notice=tenant_saved", status_code=303)


@router.post("/settings/users")
async def add_user(request: Request, state: AppStateDep, console: ConsoleStateDep, post: AdminPostDep) -> Response:
    form = post.form
    role = form.get("role", "viewer")
    try:
        if role not in ROLES:
            raise ValueError("Choose a role: admin or viewer.")
        check_password_policy(form.get("password", ""), console.console.min_password_length)
        async with state.db.session() as session:
            user = await create_user(session, tenant_id=post.user.tenant_id, email=form.get("email", ""),
                                     password_hash=hash_password(form["password"]), role=role)  # type: ignore[arg-type]
            await record_admin(session, actor=post.user.actor, action="user.create", tenant_id=post.user.tenant_id,
                               target=user.id, details={"email": user.email, "role": role})
            await session.commit()
    except PasswordPolicyError as exc:
        return await _page(request, state, console, post.user, status=400, user_error=f"Password: {exc}")
    except IntegrityError:
        return await _page(request, state, console, post.user, status=409,
                           user_error="A user with that email already exists.")
    except ValueError as exc:
        return await _page(request, state, console, post.user, status=400, user_error=str(exc))
    return RedirectResponse("/settings?notice=user_created", status_code=303)


@router.post("/settings/users/{user_id}/unlock")
async def unlock(user_id: str, request: Request, state: AppStateDep, post: AdminPostDep) -> Response:
    async with state.db.session() as session:
        target = await get_user(session, user_id)
        if target is None or target.tenant_id != post.user.tenant_id:
            return not_found(request, post.user, "No such user in your tenant.")
        await unlock_user(session, target)
        await record_admin(session, actor=post.user.actor, action="user.unlock", tenant_id=post.user.tenant_id,
                           target=user_id, details={"email": target.email})
        await session.commit()
    return RedirectResponse("/settings?notice=user_unlocked", status_code=303)


@router.post("/settings/users/{user_id}/role")
async def change_role(user_id: str, request: Request, state: AppStateDep, post: AdminPostDep) -> Response:
    role = post.form.get("role", "")
    async with state.db.session() as session:
        target = await get_user(session, user_id)
        if target is None or target.tenant_id != post.user.tenant_id or role not in ROLES:
            return not_found(request, post.user, "No such user in your tenant.")
        if target.id == post.user.id:
            return error_page(request, post.user, 400, "Not allowed", "Ask another admin to change your own role.")
        await set_role(session, target, role)  # type: ignore[arg-type]
        await record_admin(session, actor=post.user.actor, action="user.role", tenant_id=post.user.tenant_id,
                           target=user_id, details={"email": target.email, "role": role})
        await session.commit()
    return RedirectResponse("/settings?notice=user_role", status_code=303)


@router.post("/settings/password")
async def change_password(request: Request, state: AppStateDep, console: ConsoleStateDep, post: PostDep) -> Response:
    form = post.form
    async with state.db.session() as session:
        me = await get_user(session, post.user.id)
        assert me is not None  # the session was just checked
        if not await verify_password_async(form.get("current_password", ""), me.password_hash):
            return await _page(request, state, console, post.user, status=400,
                               password_error="Your current password is not right.")
        try:
            check_password_policy(form.get("new_password", ""), console.console.min_password_length)
        except PasswordPolicyError as exc:
            return await _page(request, state, console, post.user, status=400, password_error=str(exc))
        await set_password(session, me, hash_password(form["new_password"]))
        await record_admin(session, actor=post.user.actor, action="user.password", tenant_id=post.user.tenant_id,
                           target=me.id, details={"email": me.email})
        await session.commit()
        password_hash = me.password_hash
    # Every other session carried the old password's fingerprint; this one gets a new cookie.
    token, _ = console.key.issue(post.user.id, password_hash, console.console.session_ttl_s)
    response = RedirectResponse("/settings?notice=password_changed", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=console.console.session_ttl_s, httponly=True,
                        samesite="strict", secure=console.cookie_secure, path="/")
    return response
