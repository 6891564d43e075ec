"""Sign in and sign out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.console.auth import attempt_login, refuse_local_login
from outpost.control_plane.console.deps import (
    ConsoleStateDep,
    CsrfRefused,
    PostDep,
    check_origin,
    read_form,
    render,
)
from outpost.control_plane.console.oidc import OidcClient
from outpost.control_plane.console.sessions import LOGIN_COOKIE, SESSION_COOKIE
from outpost.control_plane.db.models import utcnow

router = APIRouter(include_in_schema=False)

# Marks a session that came from single sign-on, so sign-out also ends it at the provider.
SSO_COOKIE = "outpost_sso"


def oidc_client(request: Request) -> OidcClient | None:
    """The single sign-on client, when ``OUTPOST_OIDC_ISSUER`` is set (made by
    ``install_console``)."""
    return getattr(request.app.state, "oidc", None)


def local_passwords_allowed(request: Request, console: ConsoleStateDep) -> bool:
    return oidc_client(request) is None or console.settings.oidc_allow_local_passwords


def safe_next(target: str | None) -> str:
    """Only a path of this site: never ``//evil.example`` or a full URL."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    # Browsers drop tabs and newlines from URLs: "/\t/evil.example" would become "//evil.example".
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return "/"
    return target


def login_page(
    request: Request,
    console: ConsoleStateDep,
    *,
    next_: str,
    error: str | None = None,
    email: str = "",
    status: int = 200,
) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    sso = oidc_client(request)
    response = render(
        request,
        "login.html",
        None,
        status=status,
        next=next_,
        error=error,
        email=email,
        login_token=console.key.login_token(nonce),
        sso_name=sso.settings.oidc_provider_name if sso is not None else None,
        local_passwords=local_passwords_allowed(request, console),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/login",
    )
    return response


@router.get("/login")
async def login_form(
    request: Request,
    console: ConsoleStateDep,
    next: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    if console.key.read(request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_page(request, console, next_=safe_next(next))


@router.post("/login")
async def login(request: Request, state: AppStateDep, console: ConsoleStateDep) -> Response:
    check_origin(request)
    form = await read_form(request)
    next_ = safe_next(form.get("next"))
    if not console.key.check_login_token(
        request.cookies.get(LOGIN_COOKIE), form.get("login_token")
    ):
        raise CsrfRefused("The sign-in form expired. Reload the page and sign in again.")
    email = form.get("email", "")
    remote = request.client.host if request.client else None
    if not local_passwords_allowed(request, console):
        async with state.db.session() as session:
            await refuse_local_login(session, email, remote_addr=remote)
            await session.commit()
        return login_page(
            request,
            console,
            next_=next_,
            email=email,
            status=403,
            error="Password sign-in is switched off here: use single sign-on.",
        )
    async with state.db.session() as session:
        outcome = await attempt_login(
            session,
            email,
            form.get("password", ""),
            settings=console.console,
            now=utcnow(),
            remote_addr=remote,
        )
        await session.commit()
    if outcome.user is None:
        if outcome.error == "locked":
            minutes = -(-console.console.lockout_s // 60)
            return login_page(
                request,
                console,
                next_=next_,
                email=email,
                status=429,
                error=f"Too many failed attempts: this account is locked. Try again in {minutes} "
                "minutes, or ask an admin to unlock it.",
            )
        return login_page(
            request,
            console,
            next_=next_,
            email=email,
            status=401,
            error="That email and password do not match an account.",
        )
    token, _ = console.key.issue(
        outcome.user.id, outcome.user.password_hash, console.console.session_ttl_s
    )
    response = RedirectResponse(next_, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=console.console.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=console.cookie_secure,
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, post: PostDep, console: ConsoleStateDep) -> Response:
    claims = console.key.read(request.cookies.get(SESSION_COOKIE))
    if claims is not None:
        console.key.deny(claims)
    response: Response = RedirectResponse("/login?notice=signed_out", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=console.cookie_secure
    )
    sso = oidc_client(request)
    if sso is not None and request.cookies.get(SSO_COOKIE):
        # RP-initiated logout: end the provider's session too, when it offers an
        # end_session_endpoint.
        url = await sso.logout_url(
            console.settings.public_url.rstrip("/") + "/login?notice=signed_out"
        )
        if url is not None:
            # A page that moves on, not a redirect: the CSP's form-action 'self' forbids a form post
            # from ending on another site.
            response = render(
                request,
                "login_redirect.html",
                None,
                target=url,
                heading="Signing out",
                message="You are signed out of the console.",
                link=f"Sign out of {sso.settings.oidc_provider_name} too",
            )
            response.delete_cookie(
                SESSION_COOKIE,
                path="/",
                httponly=True,
                samesite="strict",
                secure=console.cookie_secure,
            )
        response.delete_cookie(SSO_COOKIE, path="/")
    return response
