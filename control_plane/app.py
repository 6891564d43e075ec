"""The app factory. Nothing is created at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI

from outpost.control_plane.api import (
    audit,
    budgets,
    deployments,
    dialects,
    e2e,
    errors,
    fairness,
    health,
    keys,
    openai,
    pools,
    quotas,
    runners,
    service_fairness,
    tunnel,
    usage,
)
from outpost.control_plane.api.limits import BodySizeLimit
from outpost.control_plane.audit.checkpoints import Checkpointer
from outpost.control_plane.cluster import Cluster
from outpost.control_plane.cluster.quotas import RedisQuotaStore
from outpost.control_plane.console import install_console
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.deployments.reconciler import Reconciler
from outpost.control_plane.observability import StateCollector, install_observability
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.routing.routing import Router, RouterConfig
from outpost.control_plane.services.auth_cache import KeyCache
from outpost.control_plane.services.owner_settings import OwnerSettingsSync
from outpost.control_plane.services.quotas import Quotas
from outpost.control_plane.services.record_writer import RecordWriter
from outpost.control_plane.settings import Settings
from outpost.control_plane.state import AppState
from outpost.control_plane.tunnel.hub import TunnelHub
from outpost.sdk.otel import setup_tracing, shutdown_tracing

__all__ = ["create_app"]

log = logging.getLogger("outpost")


def create_app(
    settings: Settings | None = None,
    *,
    migrate: bool = True,
    wall_clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """``wall_clock`` (UTC) decides budget periods and request record times; tests pass their
    own."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # OpenTelemetry traces, only when OTEL_* variables ask for them (docs/deploy.md "Traces").
        traced = setup_tracing("outpost-control-plane")
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if migrate:
            upgrade_to_head(settings.database_url)
        db = Database(settings.database_url)
        checkpointer = Checkpointer.from_settings(db, settings)
        await checkpointer.start()
        hub = TunnelHub()
        admission = Admission.from_settings(settings, wall_clock=wall_clock)
        hub.listeners.append(admission.runner_changed)
        records = RecordWriter.from_settings(
            db, settings, on_committed=admission.budgets.records_committed
        )
        await records.start()
        app.state.outpost = AppState(
            settings=settings,
            db=db,
            hub=hub,
            records=records,
            key_cache=KeyCache.for_database(db, settings),
            router=Router(RouterConfig.from_settings(settings)),
            admission=admission,
            metrics=metrics,
            checkpointer=checkpointer,
        )
        audit_metrics = checkpointer.collector()
        metrics.registry.register(audit_metrics)  # refusals to sign the audit chain
        collector = StateCollector(app.state.outpost)
        metrics.registry.register(collector)  # read at scrape time: queues, counters, fairness
        cluster = Cluster.from_settings(settings, hub, admission) if settings.redis_url else None
        if cluster is not None:  # several replicas: relay through Redis, share rate limits
            await cluster.start()
            app.state.outpost.cluster, app.state.outpost.rate_limiter = (
                cluster,
                cluster.rate_limiter,
            )
            # Token quotas count in the same windows on every replica.
            app.state.outpost.quotas = Quotas(RedisQuotaStore(cluster.redis, cluster.keys.prefix))
            app.state.outpost.key_cache.share_through(
                cluster
            )  # revocations reach every replica at once
            # An owner's change to a runner's labels, price or pool, made on another replica.
            cluster.key_listeners.append(OwnerSettingsSync(db, hub).changed_elsewhere)
        reconciler = Reconciler(
            db,
            hub,
            interval_s=settings.deployment_reconcile_interval_s,
            drain_s=settings.deployment_drain_s,
            runner_grace_s=settings.deployment_runner_grace_s,
            scale_up_after_s=settings.deployment_scale_up_after_s,
        )
        await reconciler.start()
        app.state.outpost.deployments = reconciler
        try:
            yield
        finally:
            await reconciler.stop()
            await hub.goaway("control plane shutting down")
            await records.stop()  # every queued record written before the chain's tip is signed
            if cluster is not None:
                await cluster.stop()
            await checkpointer.stop()  # sign the tip before going away
            await db.dispose()
            metrics.registry.unregister(collector)
            metrics.registry.unregister(audit_metrics)
            if traced:
                shutdown_tracing()  # export the spans still queued

    app = FastAPI(title="Outpost control plane", version="0.1.0", lifespan=lifespan)
    errors.install_error_handlers(app)
    # The inference routes first: routing walks the routers in order for every request, and
    # they take nearly all of the requests (no other router shares their paths).
    for module in (
        openai,
        dialects,
        audit,
        budgets,
        deployments,
        e2e,
        fairness,
        health,
        keys,
        pools,
        quotas,
        runners,
        service_fairness,
        tunnel,
        usage,
    ):
        app.include_router(module.router)
    install_console(app, settings)  # the web console at / (after the API, so API paths win)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    metrics = install_observability(app)  # outermost: request ids and metrics cover 413s too
    return app
