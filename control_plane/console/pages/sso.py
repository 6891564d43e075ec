"""Single sign-on routes: start the OpenID Connect flow, and the provider's redirect back."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.console.auth import record_sso_failure, sso_login
from outpost.control_plane.console.deps import ConsoleState, ConsoleStateDep, render
from outpost.control_plane.console.oidc import OidcRefused, PendingLogin, map_identity
from outpost.control_plane.console.pages.auth import SSO_COOKIE, login_page, oidc_client, safe_next
from outpost.control_plane.console.sessions import SESSION_COOKIE
from outpost.control_plane.db.models import utcnow

__all__ = ["OIDC_COOKIE", "router"]

router = APIRouter(include_in_schema=False)

OIDC_COOKIE = "outpost_oidc"
CALLBACK_PATH = "/login/oidc/callback"


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("/login/oidc")
async def start(
    request: Request,
    console: ConsoleStateDep,
    next: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    client = oidc_client(request)
    if client is None:
        return login_page(
            request, console, next_="/", status=404, error="Single sign-on is not configured."
        )
    try:
        url, pending = await client.begin(safe_next(next))
    except OidcRefused as refused:
        return login_page(
            request, console, next_=safe_next(next), status=502, error=refused.message
        )
    response = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation that must carry it.
    response.set_cookie(
        OIDC_COOKIE,
        console.key.seal("oidc", pending.dumps()),
        max_age=600,
        httponly=True,
        samesite="lax",
        secure=console.cookie_secure,
        path=CALLBACK_PATH,
    )
    return response


def _pending(console: ConsoleState, request: Request, state: str | None) -> PendingLogin:
    raw = console.key.unseal("oidc", request.cookies.get(OIDC_COOKIE))
    if raw is None:
        raise OidcRefused(
            "state_mismatch",
            "This sign-in did not start in this browser, or took too long. "
            "Start again from the sign-in page.",
        )
    try:
        pending = PendingLogin.loads(raw)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise OidcRefused("state_mismatch", "This sign-in cannot be resumed. Start again.") from exc
    if pending.expires_at < utcnow().timestamp():
        raise OidcRefused(
            "state_expired", "This sign-in took too long. Start again from the sign-in page."
        )
    if not state or state != pending.state:
        raise OidcRefused(
            "state_mismatch",
            "This sign-in answer does not belong to the sign-in this browser "
            "started. Start again from the sign-in page.",
        )
    return pending


@router.get(CALLBACK_PATH)
async def callback(
    request: Request,
    state_: AppStateDep,
    console: ConsoleStateDep,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    client = oidc_client(request)
    if client is None:
        return login_page(
            request, console, next_="/", status=404, error="Single sign-on is not configured."
        )
    next_ = "/"
    try:
        pending = _pending(console, request, state)
        next_ = pending.next
        if error or not code:
            raise OidcRefused(
                "provider_error",
                f"The identity provider did not sign you in ({(error or 'no code')[:60]}).",
            )
        claims = await client.finish(code, pending)
        identity = map_identity(claims, client.settings)
    except OidcRefused as refused:
        async with state_.db.session() as session:
            await record_sso_failure(
                session, refused, remote_addr=_remote(request), issuer=client.issuer
            )
            await session.commit()
        response = login_page(request, console, next_=next_, status=403, error=refused.message)
        response.delete_cookie(OIDC_COOKIE, path=CALLBACK_PATH)
        return response
    async with state_.db.session() as session:
        try:
            user = await sso_login(
                session, identity, now=utcnow(), remote_addr=_remote(request), issuer=client.issuer
            )
        except OidcRefused as refused:
            await session.commit()  # the refusal's audit event
            response = login_page(request, console, next_=next_, status=403, error=refused.message)
            response.delete_cookie(OIDC_COOKIE, path=CALLBACK_PATH)
            return response
        await session.commit()
        user_id, password_hash = user.id, user.password_hash
    token, _ = console.key.issue(user_id, password_hash, console.console.session_ttl_s)
    # A page, not a redirect: after the provider's cross-site redirect, a SameSite=Strict session
    # cookie is only sent once the browser navigates from this site's own page.
    response = render(
        request,
        "login_redirect.html",
        None,
        target=next_,
        heading="Signed in",
        message="You are signed in.",
        link="Continue to the console",
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=console.console.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/",
    )
    response.set_cookie(
        SSO_COOKIE,
        "1",
        max_age=console.console.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/",
    )
    response.delete_cookie(OIDC_COOKIE, path=CALLBACK_PATH)
    return response
