"""Everything the app holds for its lifetime, created in the app factory's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from outpost.control_plane.audit.checkpoints import Checkpointer
from outpost.control_plane.cluster import Cluster
from outpost.control_plane.db.engine import Database
from outpost.control_plane.deployments.reconciler import Reconciler
from outpost.control_plane.observability.metrics import ControlPlaneMetrics
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.routing.routing import Router
from outpost.control_plane.services.auth_cache import KeyCache
from outpost.control_plane.services.quotas import Quotas
from outpost.control_plane.services.ratelimit import RateLimiter, TokenBucketLimiter
from outpost.control_plane.services.record_writer import RecordWriter
from outpost.control_plane.settings import Settings
from outpost.control_plane.tunnel.hub import TunnelHub

__all__ = ["AppState"]


@dataclass
class AppState:
    settings: Settings
    db: Database
    hub: TunnelHub
    records: (
        RecordWriter  # request records and their audit events, batched (services/record_writer.py)
    )
    key_cache: KeyCache = field(
        default_factory=KeyCache
    )  # verified API keys (services/auth_cache.py)
    router: Router = field(default_factory=Router)
    rate_limiter: RateLimiter = field(default_factory=TokenBucketLimiter)
    quotas: Quotas = field(default_factory=Quotas)  # tokens and requests in flight per key/tenant
    admission: Admission = field(default_factory=Admission)  # budgets, fair queues, cost
    cluster: Cluster | None = None  # other replicas, through Redis (OUTPOST_REDIS_URL)
    metrics: ControlPlaneMetrics = field(default_factory=ControlPlaneMetrics)  # GET /metrics
    checkpointer: Checkpointer | None = (
        None  # signs the audit chain; its alarm is the console's banner
    )
    # Places deployment replicas on runners and applies their reports (control_plane/deployments).
    deployments: Reconciler | None = None
