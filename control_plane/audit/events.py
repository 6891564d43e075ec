"""The typed ways to write an audit event. Others call these, never ``append_event``.

Each helper takes the caller's session and appends in its transaction (no
commit), so the event and the action it records stand or fall together.
Events carry identifiers, counts and outcomes, never content: no prompt or
completion text, no secrets. Detail keys that usually hold such things are
refused outright rather than trusted to callers' care.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outpost.control_plane.audit.chain import (
    EventSpec,
    append_event,
    append_events,
    append_events_sync,
    format_ts,
)
from outpost.control_plane.db.models import AuditEvent, RequestRecord
from outpost.control_plane.db.rows import RequestRow

__all__ = [
    "RunnerEvent",
    "actor_for_key",
    "actor_for_runner",
    "actor_for_user",
    "inference_events",
    "operator_actor",
    "record_admin",
    "record_fairness_probe",
    "record_inference",
    "record_inferences",
    "record_inferences_sync",
    "record_login",
    "record_runner_event",
    "record_system",
]

RunnerEvent = Literal["enroll", "connect", "disconnect", "refused"]

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
# Keys that, in this codebase, would carry content or secrets.
_FORBIDDEN_KEYS = frozenset(
    {
        "prompt",
        "prompts",
        "messages",
        "message_text",
        "content",
        "completion",
        "completions",
        "choices",
        "text",
        "input",
        "output",
        "body",
        "secret",
        "password",
        "token",
        "api_key",
        "authorization",
    }
)


def actor_for_key(api_key_id: str | None) -> str:
    return f"key:{api_key_id}" if api_key_id else "anonymous"


def actor_for_user(user_id: str) -> str:
    return f"user:{user_id}"


def actor_for_runner(runner_id: str) -> str:
    return f"runner:{runner_id}"


def operator_actor() -> str:
    """Someone with shell access to the control plane's database (the CLI)."""
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "operator"


def _decimal(value: float) -> str:
    # The shortest round-trip text, never exponent notation: "0.00012", not "1.2e-04".
    return format(Decimal(repr(value)), "f")


def _text(value: str) -> str:
    """``value`` with lone surrogates (valid in JSON input, not in UTF-8) replaced by ``?``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clean(value: Any, path: str = "details") -> Any:
    """Make ``value`` canonical-JSON safe: floats → decimal strings, datetimes → ISO strings."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return _decimal(value)
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            # Canonical JSON allows ASCII keys only, and details may hold keys a client chose
            # (runner labels): escape them rather than fail the action being audited.
            key = _text(str(k)).encode("ascii", "backslashreplace").decode("ascii")
            if key.lower() in _FORBIDDEN_KEYS:
                raise ValueError(f"{path}.{key}: audit events never carry content or secrets")
            out[key] = _clean(v, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_clean(v, f"{path}[]") for v in items]
    raise TypeError(f"{path}: cannot record a {type(value).__name__} in the audit log")


async def record_admin(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    tenant_id: str | None,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An administrative change: ``action`` like ``api_key.create``, ``runner.revoke``,
    ``enrollment_token.create``, ``budget.set``, ``user.create``, ``settings.update``.

    Recorded as type ``admin.<action>`` with ``{"target": ..., "details": {...}}``.
    """
    if not _ACTION.match(action) or len(action) > 58:
        raise ValueError(
            f"bad audit action {action!r}: lowercase dotted words, e.g. 'api_key.create'"
        )
    return await append_event(
        session,
        type=f"admin.{action}",
        actor=actor,
        tenant_id=tenant_id,
        data={"target": target, "details": _clean(details or {})},
    )


async def record_login(
    session: AsyncSession,
    *,
    success: bool,
    email: str,
    tenant_id: str | None = None,
    user_id: str | None = None,
    reason: str | None = None,
    remote_addr: str | None = None,
) -> AuditEvent:
    """A console login attempt (``auth.login.success`` / ``auth.login.failure``). Never the
    password."""
    actor = actor_for_user(user_id) if user_id else "anonymous"
    return await append_event(
        session,
        type="auth.login.success" if success else "auth.login.failure",
        actor=actor,
        tenant_id=tenant_id,
        data={"email": email, "user_id": user_id, "reason": reason, "remote_addr": remote_addr},
    )


def _ms(value: float | None) -> int | None:
    return None if value is None else round(value)


async def record_inference(session: AsyncSession, record: RequestRecord) -> AuditEvent:
    """One inference request, from its request record: ids, counts, cost, outcome; no content."""
    return (await record_inferences(session, [record]))[0]


async def record_inferences(
    session: AsyncSession, records: list[RequestRecord]
) -> list[AuditEvent]:
    """One ``inference`` event per record, consecutive in the chain, in the order given."""
    return await append_events(session, [_inference_event(r) for r in records])


def record_inferences_sync(
    conn: Session | Connection, records: list[RequestRow]
) -> list[AuditEvent]:
    """:func:`record_inferences` on a synchronous session or connection (the record writer's)."""
    return append_events_sync(conn, inference_events(records))


def inference_events(records: Sequence[RequestRecord | RequestRow]) -> list[EventSpec]:
    """The ``inference`` events of ``records``, for an append path of its own
    (services/record_sqlite.py)."""
    return [_inference_event(r) for r in records]


def _inference_event(r: RequestRecord | RequestRow) -> EventSpec:
    data = {
        "request_id": r.id,
        "api_key_id": r.api_key_id,
        "model": r.model,
        "runner_id": r.runner_id,
        "endpoint": r.endpoint,
        "stream": bool(r.stream),
        "e2e": bool(r.e2e),
        "status": r.status,
        "http_status": r.http_status,
        "error_type": r.error_type,
        "prompt_tokens": r.prompt_tokens or 0,
        "completion_tokens": r.completion_tokens or 0,
        "attempts": r.attempts or 0,
        "latency_ms": _ms(r.latency_ms),
        "ttft_ms": _ms(r.ttft_ms),
        "cost_usd": None if r.cost_usd is None else _decimal(r.cost_usd),
    }
    return EventSpec(
        type="inference", actor=actor_for_key(r.api_key_id), tenant_id=r.tenant_id, data=data
    )


async def record_runner_event(
    session: AsyncSession,
    *,
    event: RunnerEvent,
    runner_id: str,
    tenant_id: str,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """``runner.enroll`` / ``runner.connect`` / ``runner.disconnect`` / ``runner.refused``.

    Revocation is an admin action: ``record_admin(action="runner.revoke")``.
    """
    return await append_event(
        session,
        type=f"runner.{event}",
        actor=actor or actor_for_runner(runner_id),
        tenant_id=tenant_id,
        data={"runner_id": runner_id, **_clean(details or {})},
    )


async def record_fairness_probe(
    session: AsyncSession,
    *,
    actor: str,
    tenant_id: str,
    run_id: str,
    suite_id: str,
    suite_version: str,
    suite_hash: str,
    model: str,
    status: str,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """A bias-probe run (``fairness.probe``): which suite, which model, how it ended. No prompts."""
    data = {
        "run_id": run_id,
        "suite_id": suite_id,
        "suite_version": suite_version,
        "suite_hash": suite_hash,
        "model": model,
        "status": status,
        "details": _clean(details or {}),
    }
    return await append_event(
        session, type="fairness.probe", actor=actor, tenant_id=tenant_id, data=data
    )


async def record_system(
    session: AsyncSession, *, action: str, actor: str, details: Mapping[str, Any] | None = None
) -> AuditEvent:
    """The audit log's own housekeeping (``audit.key.rotate``, ``audit.prune``); no tenant."""
    if not _ACTION.match(action):
        raise ValueError(f"bad audit action {action!r}")
    return await append_event(
        session, type=f"audit.{action}", actor=actor, tenant_id=None, data=_clean(details or {})
    )
