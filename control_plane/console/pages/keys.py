"""API keys (create with the secret shown once, revoke, limits) and budgets per tenant and key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.actions import keys as key_actions
from outpost.control_plane.actions.budgets import put_budget, remove_budget
from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.api.errors import http_status
from outpost.control_plane.console.deps import (
    ConsoleUser,
    KeysPostDep,
    LimitsPostDep,
    ViewUserDep,
    not_found,
    render,
)
from outpost.control_plane.console.inference import CONSOLE_KEY_PREFIX
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.domain_errors import DomainError, Forbidden, NotFound
from outpost.control_plane.permissions import ROLES, Permission, may_grant
from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.state import AppState
from outpost.control_plane.store.keys import list_api_keys

router = APIRouter(include_in_schema=False)

EXPIRY_CHOICES: dict[str, timedelta | None] = {
    "never": None,
    "1d": timedelta(days=1),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "365d": timedelta(days=365),
}
PERIODS = ("day", "week", "month")


class FormError(ValueError):
    pass


def _int(form: dict[str, str], name: str, label: str, low: int, high: int) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise FormError(f"{label} must be a whole number.") from None
    if not low <= value <= high:
        raise FormError(f"{label} must be between {low} and {high}.")
    return value


def _amount(form: dict[str, str], name: str, label: str) -> float | None:
    raw = form.get(name, "").strip().lstrip("$")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise FormError(f"{label} must be a number of dollars, e.g. 25 or 2.50.") from None
    if not 0 <= value <= 1e9:
        raise FormError(f"{label} must be between 0 and 1,000,000,000.")
    return value


def _models(form: dict[str, str]) -> list[str] | None:
    """The allow-list field: comma-separated names and patterns; empty: every model."""
    raw = form.get("allowed_models", "")
    models = [m for m in (p.strip() for p in raw.split(",")) if m]
    return models or None


def _policy(form: dict[str, str]) -> str | None:
    value = form.get("routing_policy", "").strip()
    if value and value not in POLICIES:
        raise FormError(f"Routing policy must be one of {', '.join(POLICIES)}.")
    return value or None


async def _page(
    request: Request, state: AppState, user: ConsoleUser, *, status: int = 200, **extra: Any
) -> Response:
    async with state.db.session() as session:
        keys = await list_api_keys(session, user.tenant_id)
    verdict = await state.admission.budgets.report(state.db, user.tenant_id)
    now = utcnow()
    rows = []
    for key in reversed(keys):  # newest first
        expires = (
            key.expires_at
            if key.expires_at is None or key.expires_at.tzinfo
            else key.expires_at.replace(tzinfo=now.tzinfo)
        )
        status_ = (
            "revoked"
            if key.revoked_at
            else "expired"
            if expires is not None and expires <= now
            else "active"
        )
        rows.append(
            {
                "key": key,
                "status": status_,
                "console": key.name.startswith(CONSOLE_KEY_PREFIX),
                "budgets": [s for s in verdict.statuses if s.api_key_id == key.id],
            }
        )
    names = {k.id: k.name for k in keys}
    return render(
        request,
        "keys.html",
        user,
        active="/keys",
        status=status,
        rows=rows,
        tenant_budgets=[s for s in verdict.statuses if s.scope == "tenant"],
        key_budgets=[s for s in verdict.statuses if s.scope == "key"],
        key_names=names,
        policies=POLICIES,
        periods=PERIODS,
        expiry_choices=list(EXPIRY_CHOICES),
        grantable_roles=[r for r in ROLES if may_grant(user.role, r)],
        **extra,
    )


@router.get("/keys")
async def keys_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return await _page(request, state, user)


@router.post("/keys")
async def create_key(request: Request, state: AppStateDep, post: KeysPostDep) -> Response:
    form, user = post.form, post.user
    try:
        name = form.get("name", "").strip()
        if not 1 <= len(name) <= 200 or name.startswith(CONSOLE_KEY_PREFIX):
            raise FormError(
                "Give the key a name (1 to 200 characters, not starting with 'console: ')."
            )
        expiry = form.get("expires", "never")
        if expiry not in EXPIRY_CHOICES:
            raise FormError("Choose when the key expires.")
        rpm = _int(form, "rate_limit_rpm", "Rate limit", 1, 1_000_000)
        policy = _policy(form)
        budget = _amount(form, "budget_usd", "Monthly budget")
        if budget is not None and not user.can(Permission.LIMITS_WRITE):
            raise FormError("Your role cannot set budgets: leave the budget empty.")
        role = form.get("role", "").strip() or ("admin" if form.get("admin") == "on" else "")
        allow = _models(form)
    except FormError as exc:
        return await _page(request, state, user, status=400, create_error=str(exc), draft=form)
    ttl = EXPIRY_CHOICES[expiry]
    async with state.db.session() as session:
        # One transaction: the key and its budget stand or fall together.
        try:
            key, secret = await key_actions.create_key(
                session,
                user.tenant_id,
                name,
                actor=user.actor,
                scopes=f"inference,{role}" if role else "inference",
                expires_at=utcnow() + ttl if ttl else None,
                rate_limit_rpm=rpm,
                routing_policy=policy,
                extra={"expires": expiry},
                by_role=user.role,
                allowed_models=allow,
            )
        except DomainError as exc:  # a role it may not grant, a bad model pattern
            return await _page(
                request,
                state,
                user,
                status=http_status(exc),
                create_error=exc.message,
                draft=form,
            )
        if budget is not None:
            await put_budget(
                session,
                user.tenant_id,
                actor=user.actor,
                api_key_id=key.id,
                period="month",
                amount_usd=budget,
                soft_threshold=0.8,
            )
        await session.commit()
    state.admission.budgets.invalidate(user.tenant_id)
    return render(
        request,
        "key_created.html",
        user,
        active="/keys",
        status=201,
        key=key,
        secret=secret,
        base_url=f"{state.settings.public_url}/v1",
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    key_id: str, request: Request, state: AppStateDep, post: KeysPostDep
) -> Response:
    async with state.db.session() as session:
        try:
            await key_actions.revoke_key(
                session, post.user.tenant_id, key_id, actor=post.user.actor, by_role=post.user.role
            )
        except NotFound:
            return not_found(request, post.user, f"No API key {key_id!r} in your tenant.")
        except Forbidden as exc:  # a key with a role stronger than the user's
            return await _page(request, state, post.user, status=403, limits_error=exc.message)
        await session.commit()
    return RedirectResponse("/keys?notice=key_revoked", status_code=303)


@router.post("/keys/{key_id}/models")
async def key_models(
    key_id: str, request: Request, state: AppStateDep, post: KeysPostDep
) -> Response:
    async with state.db.session() as session:
        try:
            await key_actions.set_allowed_models(
                session,
                post.user.tenant_id,
                key_id,
                _models(post.form),
                actor=post.user.actor,
                by_role=post.user.role,
            )
        except NotFound:
            return not_found(request, post.user, f"No API key {key_id!r} in your tenant.")
        except DomainError as exc:
            return await _page(
                request, state, post.user, status=http_status(exc), limits_error=exc.message
            )
        await session.commit()
    return RedirectResponse("/keys?notice=key_models", status_code=303)


@router.post("/keys/{key_id}/limits")
async def key_limits(
    key_id: str, request: Request, state: AppStateDep, post: LimitsPostDep
) -> Response:
    try:
        rpm = _int(post.form, "rate_limit_rpm", "Rate limit", 1, 1_000_000)
        policy = _policy(post.form)
    except FormError as exc:
        return await _page(
            request, state, post.user, status=400, limits_error=str(exc), limits_key=key_id
        )
    async with state.db.session() as session:
        try:
            await key_actions.set_limits(
                session,
                post.user.tenant_id,
                key_id,
                actor=post.user.actor,
                rate_limit_rpm=rpm,
                routing_policy=policy,
            )
        except NotFound:
            return not_found(request, post.user, f"No API key {key_id!r} in your tenant.")
        await session.commit()
    return RedirectResponse("/keys?notice=key_limits", status_code=303)


@router.post("/budgets")
async def set_budget_form(request: Request, state: AppStateDep, post: LimitsPostDep) -> Response:
    form, user = post.form, post.user
    key_id = form.get("api_key_id", "").strip() or None
    period = form.get("period", "month")
    try:
        amount = _amount(form, "amount_usd", "Amount")
        if amount is None:
            raise FormError("Enter the budget in dollars.")
        if period not in PERIODS:
            raise FormError("Choose a period: day, week or month.")
        threshold = _int(form, "soft_percent", "Warning threshold", 1, 100)
    except FormError as exc:
        return await _page(request, state, user, status=400, budget_error=str(exc))
    soft = (threshold or 80) / 100
    async with state.db.session() as session:
        try:
            await put_budget(
                session,
                user.tenant_id,
                actor=user.actor,
                api_key_id=key_id,
                period=period,
                amount_usd=amount,
                soft_threshold=soft,
            )
        except NotFound:
            return not_found(request, user, f"No API key {key_id!r} in your tenant.")
        await session.commit()
    state.admission.budgets.invalidate(user.tenant_id)
    return RedirectResponse("/keys?notice=budget_set#budgets", status_code=303)


@router.post("/budgets/{budget_id}/delete")
async def delete_budget_form(
    budget_id: str, request: Request, state: AppStateDep, post: LimitsPostDep
) -> Response:
    async with state.db.session() as session:
        try:
            await remove_budget(session, post.user.tenant_id, budget_id, actor=post.user.actor)
        except NotFound:
            return not_found(request, post.user, f"No budget {budget_id!r} in your tenant.")
        await session.commit()
    state.admission.budgets.invalidate(post.user.tenant_id)
    return RedirectResponse("/keys?notice=budget_deleted#budgets", status_code=303)
