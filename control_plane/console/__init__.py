"""The web console: server-rendered pages over the control plane's own services (docs/console.md).

``install_console(app, settings)`` mounts the pages at ``/``, the static
assets at ``/static`` and the handlers that turn a missing session into a
redirect to the sign-in form.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from outpost.control_plane.console.config import ConsoleSettings
from outpost.control_plane.console.deps import (
    ConsoleForbidden,
    ConsoleState,
    CsrfRefused,
    LoginRequired,
    current_user,
    render,
)
from outpost.control_plane.console.oidc import OidcClient
from outpost.control_plane.console.pages import (
    audit,
    auth,
    deployments,
    fairness,
    keys,
    models,
    overview,
    pools,
    runners,
    sso,
    usage,
)
from outpost.control_plane.console.pages import settings as settings_pages
from outpost.control_plane.console.templating import STATIC_DIR
from outpost.control_plane.errors import error_body
from outpost.control_plane.settings import Settings

__all__ = ["ConsoleSettings", "install_console"]


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def install_console(
    app: FastAPI, settings: Settings, console: ConsoleSettings | None = None
) -> None:
    app.state.console = ConsoleState(settings=settings, console=console or ConsoleSettings())
    if settings.oidc_issuer and not settings.oidc_client_id:
        raise ValueError("OUTPOST_OIDC_ISSUER is set but OUTPOST_OIDC_CLIENT_ID is empty")
    app.state.oidc = OidcClient(settings) if settings.oidc_issuer else None
    for module in (
        auth,
        sso,
        overview,
        runners,
        pools,
        deployments,
        models,
        keys,
        usage,
        audit,
        fairness,
        settings_pages,
    ):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, _: LoginRequired) -> Response:
        if request.method == "GET" and _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            query = "" if target == "/" else f"?next={quote(target, safe='/')}"
            return RedirectResponse(f"/login{query}", status_code=303)
        if _wants_html(request):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse(
            error_body("Sign in to the console first.", "invalid_request_error", "login_required"),
            status_code=401,
        )

    @app.exception_handler(ConsoleForbidden)
    async def _forbidden(request: Request, exc: ConsoleForbidden) -> Response:
        return await _refusal(request, 403, "Not allowed", exc.message, "forbidden")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return await _refusal(request, 403, "Request refused", exc.message, "csrf_failed")


async def _refusal(request: Request, status: int, title: str, message: str, code: str) -> Response:
    if not _wants_html(request):
        return JSONResponse(error_body(message, "permission_error", code), status_code=status)
    try:
        user = await current_user(request, request.app.state.outpost, request.app.state.console)
    except LoginRequired:
        user = None
    return render(request, "error.html", user, status=status, title=title, message=message)
