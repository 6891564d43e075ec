"""What console routes depend on: the signed-in user, their role, a CSRF-checked form, rendering."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from outpost.control_plane.api.deps import AppStateDep, get_state
from outpost.control_plane.console.config import ConsoleSettings
from outpost.control_plane.console.sessions import (
    SESSION_COOKIE,
    ConsoleKey,
    load_or_create_key,
    password_fingerprint,
)
from outpost.control_plane.console.templating import NOTICES, SECURITY_HEADERS, environment
from outpost.control_plane.db.models import Tenant, utcnow
from outpost.control_plane.permissions import Permission, allowed
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.users import get_user

__all__ = [
    "AdminPostDep",
    "AuditUserDep",
    "LimitsPostDep",
    "KeysPostDep",
    "PlaygroundUserDep",
    "PoolsPostDep",
    "ProbesPostDep",
    "DeploymentsPostDep",
    "RunnersPostDep",
    "ViewUserDep",
    "ConsoleForbidden",
    "ConsoleState",
    "ConsoleStateDep",
    "ConsoleUser",
    "CsrfRefused",
    "LoginRequired",
    "Post",
    "PostDep",
    "ScriptUserDep",
    "UserDep",
    "check_origin",
    "console_state",
    "current_user",
    "error_page",
    "not_found",
    "read_form",
    "render",
    "requires_post",
    "requires_user",
]

MAX_FORM_FIELDS = 64


class LoginRequired(Exception):
    """No valid session: pages redirect to the sign-in form, scripts get 401."""


class ConsoleForbidden(Exception):
    def __init__(
        self, message: str = "Your role cannot do this. Ask an owner or admin of your tenant."
    ) -> None:
        super().__init__(message)
        self.message = message


class CsrfRefused(Exception):
    def __init__(
        self,
        message: str = "This form has expired or did not come from the console. "
        "Reload the page and try again.",
    ) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ConsoleState:
    settings: Settings
    console: ConsoleSettings
    _key: ConsoleKey | None = field(default=None, repr=False)

    @property
    def key(self) -> ConsoleKey:
        # Loaded on first use: the state directory exists once the app has started.
        if self._key is None:
            path = self.console.secret_file or self.settings.state_dir / "console-secret"
            self._key = ConsoleKey(load_or_create_key(path))
        return self._key

    @property
    def cookie_secure(self) -> bool:
        if self.console.cookie_secure is not None:
            return self.console.cookie_secure
        return self.settings.public_url.startswith("https://")


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


ConsoleStateDep = Annotated[ConsoleState, Depends(console_state)]


@dataclass(frozen=True)
class ConsoleUser:
    id: str
    email: str
    role: str
    tenant_id: str
    tenant_name: str
    session_id: str
    csrf_token: str
    expires_at: int

    @property
    def is_admin(self) -> bool:
        """Tenant-wide administration (users, tenant settings): owner and admin."""
        return allowed(self.role, Permission.TENANT_WRITE)

    def can(self, permission: Permission | str) -> bool:
        """For pages and templates (``user.can("runners.write")``): the one table decides."""
        return allowed(self.role, Permission(permission))

    @property
    def actor(self) -> str:
        return f"user:{self.id}"


async def current_user(
    request: Request, state: AppStateDep, console: ConsoleStateDep
) -> ConsoleUser:
    claims = console.key.read(request.cookies.get(SESSION_COOKIE))
    if claims is None:
        raise LoginRequired()
    async with state.db.session() as session:
        user = await get_user(session, claims.user_id)
        tenant = await session.get(Tenant, user.tenant_id) if user is not None else None
    # A deleted user, or a changed password, ends the session.
    if (
        user is None
        or tenant is None
        or password_fingerprint(user.password_hash) != claims.password_fp
    ):
        raise LoginRequired()
    return ConsoleUser(
        id=user.id,
        email=user.email,
        role=user.role,
        tenant_id=user.tenant_id,
        tenant_name=tenant.name,
        session_id=claims.session_id,
        csrf_token=console.key.csrf_token(claims.session_id),
        expires_at=claims.expires_at,
    )


UserDep = Annotated[ConsoleUser, Depends(current_user)]


def check_origin(request: Request) -> None:
    """Defence in depth behind SameSite=Strict and the token: a browser's Origin must be this site
    (the Host it asked, or the public URL when a proxy rewrites Host)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return
    allowed = {
        request.headers.get("host", ""),
        urlsplit(console_state(request).settings.public_url).netloc,
    }
    if urlsplit(origin).netloc not in allowed:
        raise CsrfRefused("This request came from another site.")


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the console's forms post nothing else); the last value of a
    repeated name wins,
    except that names ending in ``[]`` collect lists joined by commas."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise CsrfRefused("Forms must be sent as application/x-www-form-urlencoded.")
    body = (await request.body()).decode("utf-8", errors="replace")
    pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    form: dict[str, str] = {}
    for name, value in pairs:
        if name.endswith("[]"):
            form[name] = f"{form[name]},{value}" if name in form else value
        else:
            form[name] = value
    return form


@dataclass(frozen=True)
class Post:
    user: ConsoleUser
    form: dict[str, str]


async def csrf_post(request: Request, user: UserDep, console: ConsoleStateDep) -> Post:
    check_origin(request)
    form = await read_form(request)
    if not console.key.check_csrf(user.session_id, form.get("csrf_token")):
        raise CsrfRefused()
    return Post(user, form)


PostDep = Annotated[Post, Depends(csrf_post)]


def requires_post(permission: Permission) -> Callable[[Post], Awaitable[Post]]:
    """A CSRF-checked form from a user whose role holds ``permission``."""

    async def check(post: PostDep) -> Post:
        if not post.user.can(permission):
            raise ConsoleForbidden()
        return post

    return check


AdminPostDep = Annotated[Post, Depends(requires_post(Permission.TENANT_WRITE))]
KeysPostDep = Annotated[Post, Depends(requires_post(Permission.KEYS_WRITE))]
LimitsPostDep = Annotated[Post, Depends(requires_post(Permission.LIMITS_WRITE))]
RunnersPostDep = Annotated[Post, Depends(requires_post(Permission.RUNNERS_WRITE))]
PoolsPostDep = Annotated[Post, Depends(requires_post(Permission.POOLS_WRITE))]
ProbesPostDep = Annotated[Post, Depends(requires_post(Permission.PROBES_RUN))]
DeploymentsPostDep = Annotated[Post, Depends(requires_post(Permission.DEPLOYMENTS_WRITE))]


def requires_user(permission: Permission) -> Callable[[ConsoleUser], Awaitable[ConsoleUser]]:
    """A signed-in user whose role holds ``permission`` (pages that only read)."""

    async def check(user: UserDep) -> ConsoleUser:
        if not user.can(permission):
            raise ConsoleForbidden()
        return user

    return check


# Every page of the tenant's things: all roles but the auditor, who sees the audit log only.
ViewUserDep = Annotated[ConsoleUser, Depends(requires_user(Permission.VIEW))]
AuditUserDep = Annotated[ConsoleUser, Depends(requires_user(Permission.AUDIT_READ))]


async def csrf_header(request: Request, user: UserDep, console: ConsoleStateDep) -> ConsoleUser:
    """For the console's own scripts (``fetch``): the token travels in ``X-CSRF-Token``."""
    check_origin(request)
    if not console.key.check_csrf(user.session_id, request.headers.get("x-csrf-token")):
        raise CsrfRefused()
    return user


ScriptUserDep = Annotated[ConsoleUser, Depends(csrf_header)]


async def playground_user(user: ScriptUserDep) -> ConsoleUser:
    if not user.can(Permission.PLAYGROUND):
        raise ConsoleForbidden()
    return user


PlaygroundUserDep = Annotated[ConsoleUser, Depends(playground_user)]


def render(
    request: Request,
    template: str,
    user: ConsoleUser | None = None,
    *,
    status: int = 200,
    active: str | None = None,
    **context: Any,
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    html = (
        environment()
        .get_template(template)
        .render(
            request=request,
            user=user,
            active=active if active is not None else request.url.path,
            notice=notice,
            now=utcnow(),
            state=get_state(request),
            **context,
        )
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(
    request: Request, user: ConsoleUser | None, status: int, title: str, message: str
) -> HTMLResponse:
    return render(request, "error.html", user, status=status, title=title, message=message)


def not_found(request: Request, user: ConsoleUser, message: str) -> HTMLResponse:
    """Another tenant's things do not exist here: the same answer as a made-up id."""
    return error_page(request, user, 404, "Not found", message)
