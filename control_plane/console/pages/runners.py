"""Runners: hardware, engines, models, status, live load and cost; enroll (token shown once);
revoke."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from outpost.control_plane.actions import runners as runner_actions
from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.api.errors import http_status
from outpost.control_plane.console.deps import RunnersPostDep, ViewUserDep, not_found, render
from outpost.control_plane.console.queries import served_models
from outpost.control_plane.db.models import Runner
from outpost.control_plane.domain_errors import DomainError, NotFound
from outpost.control_plane.services.cost import hourly_rate
from outpost.control_plane.services.owner_settings import apply_owner_settings
from outpost.control_plane.state import AppState
from outpost.control_plane.store.pools import default_pool, list_pools
from outpost.control_plane.store.runners import check_usd_per_hour, list_runners
from outpost.control_plane.tls import token_with_pin
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.sdk.protocol import CloseCode

__all__ = ["RunnerView", "router", "runner_views", "with_live_state"]

router = APIRouter(include_in_schema=False)


@dataclass
class RunnerView:
    id: str
    name: str
    status: str  # connected | draining | offline | revoked
    created_at: datetime
    last_seen_at: datetime | None
    labels: dict[str, str]  # owner-set: what residency obeys
    capacity: int
    hardware: dict[str, Any]
    cost: dict[str, Any]
    usd_per_hour: float | None
    models: list[dict[str, Any]] = field(default_factory=list)
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    healthy: bool = True
    unavailable_models: list[str] = field(
        default_factory=list
    )  # engine down: restarting, loading, hung
    in_flight: int = 0
    queued: int = 0
    completed: int = 0
    links: int = 0
    pool_id: str = ""
    reported_labels: dict[str, str] = field(
        default_factory=dict
    )  # the runner's claim, never trusted

    @property
    def engines(self) -> list[str]:
        return sorted({m["engine"] for m in self.models})

    @property
    def cpu(self) -> dict[str, Any]:
        return self.hardware.get("cpu") or {}

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return list(self.hardware.get("gpus") or [])

    @property
    def load_fraction(self) -> float:
        return min(1.0, (self.running + self.waiting) / self.capacity) if self.capacity else 0.0


async def runner_views(state: AppState, session: Any, tenant_id: str) -> list[RunnerView]:
    """The tenant's runners: stored facts, then the live ones from the tunnel hub."""
    rows: list[Runner] = await list_runners(session, tenant_id)
    stored: dict[str, list[dict[str, Any]]] = {}
    for model, runner in await served_models(session, tenant_id):
        stored.setdefault(runner.id, []).append(
            {
                "name": model.name,
                "engine": model.engine,
                "context_length": model.context_length,
                "quantization": model.quantization,
                "aliases": list(model.aliases or []),
            }
        )
    views = []
    for row in rows:
        live = state.hub.runners.get(row.id)
        status = "revoked" if row.revoked_at else "offline"
        view = RunnerView(
            id=row.id,
            name=row.name,
            status=status,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            labels=dict(row.labels or {}),
            capacity=row.capacity,
            hardware=dict(row.hardware or {}),
            cost=dict(row.cost or {}),
            usd_per_hour=hourly_rate(row.cost) if row.cost else None,
            models=stored.get(row.id, []),
            pool_id=row.pool_id,
            reported_labels=dict(row.reported_labels or {}),
        )
        if live is not None and not row.revoked_at:
            with_live_state(view, live)
        views.append(view)
    return views


def with_live_state(view: RunnerView, live: ConnectedRunner) -> None:
    """Overlay what the connected runner says now (its hello, its freshest status report) on the
    stored view; labels and cost are the owner's, as the hub holds them."""
    view.status = "draining" if live.draining else "connected"
    view.labels, view.capacity = dict(live.labels), live.capacity
    view.hardware, view.cost = dict(live.hardware), live.cost.to_dict()
    view.usd_per_hour = live.usd_per_second * 3600
    view.models = [
        {
            "name": m.name,
            "engine": m.engine,
            "context_length": m.context_length,
            "quantization": m.quantization,
            "aliases": list(m.aliases),
        }
        for m in live.models
    ]
    loads = [ln.load for ln in live.links if not ln.closed]
    freshest = max(loads, key=lambda load: load.updated_at, default=None)
    if freshest is not None:
        view.running, view.waiting = freshest.running, freshest.waiting
        view.kv_cache_usage, view.healthy = freshest.kv_cache_usage, freshest.healthy
        view.unavailable_models = list(freshest.unavailable_models)
    view.completed = max((load.completed for load in loads), default=0)
    view.in_flight, view.queued, view.links = live.in_flight, live.queued, len(live.links)


async def _page(
    request: Request, state: AppState, user: Any, *, status: int = 200, **extra: Any
) -> Response:
    async with state.db.session() as session:
        views = await runner_views(state, session, user.tenant_id)
        await default_pool(session, user.tenant_id)
        pools = await list_pools(session, user.tenant_id)
        await session.commit()
    return render(
        request,
        "runners.html",
        user,
        status=status,
        active="/runners",
        runners=views,
        pools=pools,
        public_url=state.settings.public_url,
        ttl_s=state.settings.enrollment_token_ttl_s,
        **extra,
    )


@router.get("/runners")
async def runners_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return await _page(request, state, user)


@router.get("/runners/_live")
async def runners_live(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    """The runners table alone, polled by the page for live load."""
    async with state.db.session() as session:
        views = await runner_views(state, session, user.tenant_id)
        pools = await list_pools(session, user.tenant_id)
    return render(
        request, "partials/runners_table.html", user, active="/runners", runners=views, pools=pools
    )


@router.post("/runners/enroll")
async def enroll(request: Request, state: AppStateDep, post: RunnersPostDep) -> Response:
    name = post.form.get("name", "").strip()
    if not name or len(name) > 200:
        return await _page(
            request, state, post.user, enroll_error="Give the runner a name (1 to 200 characters)."
        )
    try:
        labels = _labels(post.form.get("labels", ""))
    except ValueError as exc:
        return await _page(request, state, post.user, status=400, enroll_error=str(exc))
    async with state.db.session() as session:
        try:
            row, token = await runner_actions.enroll_runner(
                session,
                post.user.tenant_id,
                name,
                state.settings.enrollment_token_ttl_s,
                actor=post.user.actor,
                pool=post.form.get("pool", "").strip() or None,
                labels=labels,
            )
        except DomainError as exc:
            return await _page(
                request, state, post.user, status=http_status(exc), enroll_error=exc.message
            )
        await session.commit()
    # Served over TLS here, the token carries the key pin (control_plane/tls.py).
    token = token_with_pin(token, state.settings)
    return render(
        request,
        "enroll_token.html",
        post.user,
        active="/runners",
        status=201,
        token=token,
        runner_name=name,
        expires_at=row.expires_at,
        public_url=state.settings.public_url,
    )


def _labels(raw: str) -> dict[str, str]:
    """Residency labels typed as ``key=value`` pairs, comma separated (``site=lab-1,
    region=eu``)."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or len(key.strip()) > 64 or len(value.strip()) > 256:
            raise ValueError(
                f"Labels are key=value pairs separated by commas; {part[:40]!r} is not one."
            )
        labels[key.strip()] = value.strip()
    if len(labels) > 64:
        raise ValueError("At most 64 labels.")
    return labels


@router.post("/runners/{runner_id}/settings")
async def settings(
    runner_id: str, request: Request, state: AppStateDep, post: RunnersPostDep
) -> Response:
    """The owner's decisions: residency labels, price, pool (as ``PATCH /api/runners/{id}``)."""
    form = post.form
    try:
        labels = _labels(form.get("labels", ""))
        raw_price = form.get("usd_per_hour", "").strip().lstrip("$")
        price = check_usd_per_hour(float(raw_price)) if raw_price else None
    except ValueError as exc:
        message = (
            str(exc)
            if "label" in str(exc).lower()
            else "The price must be a number of dollars per hour, 0 to 1000."
        )
        return await _page(request, state, post.user, status=400, settings_error=message)
    async with state.db.session() as session:
        try:
            runner = await runner_actions.find_runner(session, post.user.tenant_id, runner_id)
        except NotFound:
            return not_found(request, post.user, f"No runner {runner_id!r} in your tenant.")
        try:
            await runner_actions.set_runner_settings(
                session,
                runner,
                actor=post.user.actor,
                labels=labels,
                usd_per_hour=price,
                pool=form.get("pool", "").strip() or None,
            )
        except DomainError as exc:
            return await _page(
                request, state, post.user, status=http_status(exc), settings_error=exc.message
            )
        await session.commit()
        apply_owner_settings(state.hub, runner)
    return RedirectResponse("/runners?notice=runner_saved", status_code=303)


@router.post("/runners/{runner_id}/revoke")
async def revoke(
    runner_id: str, request: Request, state: AppStateDep, post: RunnersPostDep
) -> Response:
    async with state.db.session() as session:
        try:
            await runner_actions.revoke(
                session, post.user.tenant_id, runner_id, actor=post.user.actor
            )
        except NotFound:
            return not_found(request, post.user, f"No runner {runner_id!r} in your tenant.")
        await session.commit()
    await state.hub.disconnect(runner_id, CloseCode.REVOKED, "runner revoked")
    return RedirectResponse("/runners?notice=runner_revoked", status_code=303)
