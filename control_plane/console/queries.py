"""Read-only views over request records, audit events and served models that only the console needs.

Totals per key, model and runner come from ``store.budgets.usage`` (the
same numbers the usage API returns); this module adds what a page draws:
time buckets, the latest records, newest-first audit pages, name lookups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, SQLColumnExpression, case, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from outpost.control_plane.audit.chain import format_ts
from outpost.control_plane.audit.schemas import AuditQuery
from outpost.control_plane.db.models import ApiKey, AuditEvent, RequestRecord, Runner, ServedModel

__all__ = [
    "Bucket",
    "audit_page",
    "key_names",
    "recent_requests",
    "runner_names",
    "served_models",
    "timeseries",
    "window_stats",
]


@dataclass
class Bucket:
    start: datetime
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


def _epoch(session: AsyncSession, column: SQLColumnExpression[datetime]) -> ColumnElement[int]:
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), Integer)
    return cast(func.strftime("%s", column), Integer)


async def timeseries(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime, bucket: timedelta
) -> list[Bucket]:
    """Requests, errors, tokens and dollars per time bucket in ``[start, end)``, empty buckets
    included.

    Bucketed by the database (integer division of the epoch), so the cost is
    one grouped scan of the tenant's index, whatever the traffic.
    """
    size = int(bucket.total_seconds())
    origin = int(start.timestamp()) // size * size
    index = (_epoch(session, RequestRecord.created_at) - origin) // size
    stmt = (
        select(
            index.label("i"),
            func.count(),
            func.coalesce(func.sum(case((RequestRecord.status != "ok", 1), else_=0)), 0),
            func.coalesce(func.sum(RequestRecord.prompt_tokens), 0),
            func.coalesce(func.sum(RequestRecord.completion_tokens), 0),
            func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
        )
        .where(
            RequestRecord.tenant_id == tenant_id,
            RequestRecord.created_at >= start,
            RequestRecord.created_at < end,
        )
        .group_by("i")
    )
    count = max(1, -(-(int(end.timestamp()) - origin) // size))
    buckets = [
        Bucket(datetime.fromtimestamp(origin + i * size, tz=start.tzinfo)) for i in range(count)
    ]
    # Aggregates read as untyped values; each is converted below.
    rows: list[tuple[Any, ...]] = [tuple(r) for r in (await session.execute(stmt)).all()]
    for i, n, errors, prompt, completion, cost in rows:
        if i is not None and 0 <= int(i) < count:
            b = buckets[int(i)]
            b.requests, b.errors = int(n), int(errors)
            b.prompt_tokens, b.completion_tokens, b.cost_usd = (
                int(prompt),
                int(completion),
                float(cost),
            )
    return buckets


@dataclass(frozen=True)
class WindowStats:
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    avg_latency_ms: float | None
    avg_ttft_ms: float | None


async def window_stats(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> WindowStats:
    stmt = select(
        func.count(),
        func.coalesce(func.sum(case((RequestRecord.status != "ok", 1), else_=0)), 0),
        func.coalesce(func.sum(RequestRecord.prompt_tokens), 0),
        func.coalesce(func.sum(RequestRecord.completion_tokens), 0),
        func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
        func.avg(RequestRecord.latency_ms),
        func.avg(RequestRecord.ttft_ms),
    ).where(
        RequestRecord.tenant_id == tenant_id,
        RequestRecord.created_at >= start,
        RequestRecord.created_at < end,
    )
    row: tuple[Any, ...] = tuple((await session.execute(stmt)).one())
    n, e, p, c, usd, lat, ttft = row
    return WindowStats(
        int(n),
        int(e),
        int(p),
        int(c),
        float(usd),
        None if lat is None else float(lat),
        None if ttft is None else float(ttft),
    )


async def recent_requests(
    session: AsyncSession, tenant_id: str, limit: int = 10
) -> list[RequestRecord]:
    stmt = (
        select(RequestRecord)
        .where(RequestRecord.tenant_id == tenant_id)
        .order_by(RequestRecord.created_at.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def key_names(session: AsyncSession, tenant_id: str) -> dict[str, str]:
    """Key id → name; a name several keys share gets the key's prefix (each probe run has its
    own key)."""
    rows = (
        await session.execute(
            select(ApiKey.id, ApiKey.name, ApiKey.prefix).where(ApiKey.tenant_id == tenant_id)
        )
    ).all()
    counts: dict[str, int] = {}
    for _, name, _ in rows:
        counts[name] = counts.get(name, 0) + 1
    return {k: (f"{n} ({p[:6]})" if counts[n] > 1 else n) for k, n, p in rows}


async def runner_names(session: AsyncSession, tenant_id: str) -> dict[str, str]:
    rows = await session.execute(
        select(Runner.id, Runner.name).where(Runner.tenant_id == tenant_id)
    )
    return {k: n for k, n in rows.all()}


async def served_models(session: AsyncSession, tenant_id: str) -> list[tuple[ServedModel, Runner]]:
    """What this tenant's runners last said they serve (kept while they are offline)."""
    stmt = (
        select(ServedModel, Runner)
        .join(Runner, Runner.id == ServedModel.runner_id)
        .where(Runner.tenant_id == tenant_id)
        .order_by(ServedModel.name, Runner.name)
    )
    return [(m, r) for m, r in (await session.execute(stmt)).all()]


async def audit_page(
    session: AsyncSession, tenant_id: str, query: AuditQuery, before_seq: int | None = None
) -> list[AuditEvent]:
    """Newest first (``query.limit`` + 1 rows), with the filters of ``audit.query.list_events``.

    The API pages forward from the oldest event, as an exporter wants; a person
    reading the log wants the latest first, so this pages backwards by seq.
    """
    stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if query.type:
        stmt = stmt.where(
            or_(
                AuditEvent.type == query.type,
                AuditEvent.type.startswith(query.type + ".", autoescape=True),
            )
        )
    if query.actor:
        stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.since:
        stmt = stmt.where(AuditEvent.ts >= format_ts(query.since))
    if query.until:
        stmt = stmt.where(AuditEvent.ts < format_ts(query.until))
    if before_seq is not None:
        stmt = stmt.where(AuditEvent.seq < before_seq)
    stmt = stmt.order_by(AuditEvent.seq.desc()).limit(query.limit + 1)
    return list((await session.execute(stmt)).scalars())
