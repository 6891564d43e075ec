"""Jinja2 over ``web/templates``: autoescaped, with the console's filters and security headers."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from outpost import web

__all__ = [
    "NAV",
    "NOTICES",
    "SECURITY_HEADERS",
    "STATIC_DIR",
    "TEMPLATES_DIR",
    "environment",
    "static_version",
]

WEB_DIR = Path(web.__file__).parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

#: (path, label) of the main navigation, in order.
NAV: tuple[tuple[str, str], ...] = (
    ("/", "Overview"),
    ("/runners", "Runners"),
    ("/pools", "Pools"),
    ("/deployments", "Deployments"),
    ("/models", "Models"),
    ("/playground", "Playground"),
    ("/keys", "API keys"),
    ("/usage", "Usage"),
    ("/audit", "Audit"),
    ("/fairness", "Fairness"),
    ("/settings", "Settings"),
)

#: Messages a redirect may ask a page to show (``?notice=``): fixed texts, nothing reflected.
NOTICES: dict[str, str] = {
    "key_revoked": "The API key was revoked. Requests with it are refused from now on.",
    "key_models": "The key's allowed models were saved.",
    "key_limits": "The key's limits were saved.",
    "runner_revoked": "The runner was revoked and disconnected; it cannot reconnect.",
    "runner_saved": (
        "The runner's labels, price and pool were saved; routing uses them from now on."
    ),
    "pool_created": "The pool was created.",
    "pool_granted": "The pool was granted; the grantee's requests may use it from now on.",
    "grant_revoked": "The grant was revoked; requests stop using the pool at once.",
    "sharing_saved": "Shared-pool setting saved.",
    "deployment_created": "The deployment was created; its replicas are being placed.",
    "deployment_scaled": "The number of replicas was saved.",
    "deployment_deleted": "The deployment was deleted; its replicas are being undeployed.",
    "budget_set": "The budget was saved.",
    "budget_deleted": "The budget was deleted.",
    "tenant_saved": "Tenant settings saved.",
    "user_created": "The user was created. Give them their password through a safe channel.",
    "user_unlocked": "The account was unlocked.",
    "user_role": "The user's role was changed.",
    "password_changed": "Your password was changed; other sessions have ended.",
    "probe_started": "The probe run started; this page follows its progress.",
    "signed_out": "You have signed out.",
}

# Scripts and styles only from this origin: no inline script can run, even if
# some text escaped its escaping.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action "
    "'self'; object-src 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


@lru_cache(maxsize=1)
def static_version() -> str:
    """A digest of the static files, appended to their URLs so browsers never run stale code."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _money(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0.00"
    if digits is None:
        digits = 2 if abs(value) >= 1 else 4 if abs(value) >= 0.01 else 6
    return f"${value:,.{digits}f}"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits == 0 and value != int(value):
        digits = 1
    return f"{value:,.{digits}f}"


def _compact(value: float | None) -> str:
    if value is None:
        return "—"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.2f}"


def _pct(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def _bytes(value: float | None) -> str:
    if not value:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return ""


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = when
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _day(value: datetime) -> str:
    return (
        value.astimezone(UTC).strftime("%Y-%m-%d") if value.tzinfo else value.strftime("%Y-%m-%d")
    )


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "in " + _span(-seconds)
    return _span(seconds) + " ago"


def _span(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=_money,
        num=_num,
        compact=_compact,
        pct=_pct,
        ms=_ms,
        bytes=_bytes,
        when=_when,
        ago=_ago,
        day=_day,
        pretty=_pretty,
        span=_span,
    )
    env.globals.update(nav=NAV, static_version=static_version, Markup=Markup)
    return env
