"""Deployments sharing one public name, side by side on the same traffic (A/B).

Computed from the request records (never prompt text): a record says which deployment's replica
answered it (``deployment_id``), so two deployments sharing one runner are told apart. A record
without it (written before migration 0008) counts for the deployment holding a replica on the
runner that answered it, as before; records of runners that held a replica earlier and no
longer do are then not attributed (docs/deployments.md "Comparison").
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.models import Deployment, FairnessRun, RequestRecord, utcnow
from outpost.control_plane.store.deployments import replicas_by_deployment

__all__ = ["MAX_RECORDS", "compare_deployments"]

#: Records read for one comparison, newest first: a bound on its cost.
MAX_RECORDS = 50_000
#: Completed bias-probe runs read for one comparison, newest first.
MAX_PROBE_RUNS = 200


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    s = sorted(values)
    return round(s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))], 2)


def _stats(records: list[RequestRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.status == "ok"]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    # Inter-token latency of a request: its decode time over the tokens after the first.
    itl = [
        (r.latency_ms - r.ttft_ms) / (r.completion_tokens - 1)
        for r in ok
        if r.latency_ms is not None and r.ttft_ms is not None and r.completion_tokens > 1
    ]
    rates = [
        r.completion_tokens / (r.latency_ms / 1000)
        for r in ok
        if r.latency_ms and r.latency_ms > 0 and r.completion_tokens > 0
    ]
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in records)
    cost = sum(r.cost_usd or 0.0 for r in records)
    return {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "error_rate": round((len(records) - len(ok)) / len(records), 4) if records else None,
        "ttft_ms": {"p50": _pct(ttft, 50), "p95": _pct(ttft, 95), "p99": _pct(ttft, 99)},
        "itl_ms": {"p50": _pct(itl, 50), "p95": _pct(itl, 95), "p99": _pct(itl, 99)},
        "tokens_per_s": {"p50": _pct(rates, 50), "mean": round(sum(rates) / len(rates), 2)}
        if rates
        else {"p50": None, "mean": None},
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
        "cost_usd": round(cost, 6),
        "usd_per_1m_tokens": round(cost / tokens * 1e6, 4) if tokens else None,
    }


async def compare_deployments(
    session: AsyncSession, tenant_id: str, name: str, window_s: int
) -> list[dict[str, Any]]:
    """Each of the tenant's deployments serving ``name``, with its numbers over ``window_s``."""
    stmt = select(Deployment).where(
        Deployment.tenant_id == tenant_id, Deployment.status == "active"
    )
    deployments = [
        d for d in (await session.execute(stmt)).scalars() if name == d.name or name in d.aliases
    ]
    replicas = await replicas_by_deployment(session, [d.id for d in deployments])
    names = {n for d in deployments for n in (d.name, *d.aliases)}
    since = utcnow() - timedelta(seconds=window_s)
    rows = (
        (
            await session.execute(
                select(RequestRecord)
                .where(
                    RequestRecord.tenant_id == tenant_id,
                    RequestRecord.created_at >= since,
                    RequestRecord.model.in_(names or {name}),
                )
                .order_by(RequestRecord.created_at.desc())
                .limit(MAX_RECORDS)
            )
        )
        .scalars()
        .all()
    )
    probes = await latest_probe_runs(session, tenant_id, names or {name})
    out = []
    for d in deployments:
        runners = {r.runner_id for r in replicas[d.id]}
        mine = [
            r
            for r in rows
            if r.deployment_id == d.id or (r.deployment_id is None and r.runner_id in runners)
        ]
        out.append(
            {
                "id": d.id,
                "name": d.name,
                "weight": d.weight,
                "generation": d.generation,
                "engine": d.engine,
                "engine_options": d.engine_options,
                "source": d.source,
                "runners": sorted(runners),
                "window_s": window_s,
                **_stats(mine),
                "bias_probe": _probe_of(d, deployments, probes),
            }
        )
    return out


async def latest_probe_runs(
    session: AsyncSession, tenant_id: str, names: set[str]
) -> dict[str, dict[str, Any]]:
    """Model name -> the tenant's latest completed bias-probe run of it (docs/fairness.md): its
    id, when it finished, the attributes it flagged, and where to read it. Reports and
    responses are not loaded, only the flagged list."""
    flagged = FairnessRun.report[("report", "flagged_attributes")]
    stmt = (
        select(FairnessRun.id, FairnessRun.model, FairnessRun.finished_at, flagged.label("flagged"))
        .where(
            FairnessRun.tenant_id == tenant_id,
            FairnessRun.status == "completed",
            FairnessRun.model.in_(names),
        )
        .order_by(FairnessRun.finished_at.desc(), FairnessRun.id)
        .limit(MAX_PROBE_RUNS)
    )
    latest: dict[str, dict[str, Any]] = {}
    for row in (await session.execute(stmt)).all():
        if row.model in latest:
            continue
        found = row.flagged if isinstance(row.flagged, list) else []
        latest[row.model] = {
            "run_id": row.id,
            "model": row.model,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "flagged_attributes": [str(a)[:200] for a in found[:64]],
            "url": f"/fairness/runs/{row.id}",
            "api_url": f"/api/fairness/runs/{row.id}",
        }
    return latest


def _probe_of(
    d: Deployment, deployments: list[Deployment], probes: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The latest run of a name only this deployment serves (an alias of its own: the probe's
    requests reached it alone), else of the shared name, marked ``shared``: the A/B split sent
    that run's requests to any of the deployments serving it."""
    shared = {n for o in deployments if o is not d for n in (o.name, *o.aliases)}
    runs = [probes[n] for n in (d.name, *d.aliases) if n in probes]
    own = [r for r in runs if r["model"] not in shared]
    pick = max(own or runs, key=lambda r: r["finished_at"] or "", default=None)
    return None if pick is None else {**pick, "shared": pick["model"] in shared}
