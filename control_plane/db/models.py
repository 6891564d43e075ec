"""ORM rows (SQLAlchemy 2, typed). API schemas live in ``control_plane.schemas``.

Changing a class here needs a migration in ``migrations/versions``; the test
suite runs ``alembic check`` so the two cannot drift.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiKey",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "AuditKey",
    "AuditTenantHead",
    "Base",
    "Budget",
    "Deployment",
    "DeploymentReplica",
    "EnrollmentToken",
    "FairnessRun",
    "Pool",
    "PoolGrant",
    "RequestRecord",
    "Runner",
    "ServedModel",
    "Tenant",
    "User",
    "new_id",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict: JSON,
        dict[str, Any]: JSON,
    }


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Fair-share weight in the scheduler (Virtual Token Counter).
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    routing_policy: Mapped[str] = mapped_column(String(16), default="balanced")
    # Residency rules: {"label": ["allowed", "values"]}; a runner must match every rule.
    residency: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Refuse every pool another tenant grants: requests go to the tenant's own runners only.
    refuse_shared_pools: Mapped[bool] = mapped_column(Boolean, default=False)
    # The platform operator, the one role above tenant admin (docs/security.md): its admins
    # may grant a pool to every tenant at once and see and revoke any grant.
    platform_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    # Quotas over all the tenant's keys (control_plane.quotas); NULL: none.
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Pool(Base):
    """A set of one tenant's runners that requests may be routed to; granted to other tenants
    explicitly."""

    __tablename__ = "pools"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PoolGrant(Base):
    """A pool's owner lets another tenant (or, by the platform operator, every tenant) route to
    it."""

    __tablename__ = "pool_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    # NULL: every tenant (only the platform operator may grant so).
    grantee_tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True, default=None
    )
    granted_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(200), default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Lookup by prefix, then a constant-time compare of the hash.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(String(200), default="inference")
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, default=None)
    routing_policy: Mapped[str | None] = mapped_column(String(16), default=None)
    # Model names and glob patterns the key may call; NULL: every model its tenant can reach.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # Quotas (control_plane.quotas): input + output tokens, and requests in flight; NULL: none.
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    runner_name: Mapped[str] = mapped_column(String(200))
    # The pool the runner joins; NULL: the tenant's default pool.
    pool_id: Mapped[str | None] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), default=None
    )
    # Owner-set residency labels the runner gets at registration.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None] = mapped_column(default=None)


class Runner(Base):
    __tablename__ = "runners"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Exactly one pool, of the runner's own tenant.
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    identity_public_key: Mapped[str] = mapped_column(String(128))
    hpke_public_key: Mapped[str | None] = mapped_column(String(2048), default=None)
    # The HPKE key signed by the identity key, served to e2e clients.
    hpke_key_signature: Mapped[str | None] = mapped_column(String(256), default=None)
    # Residency labels routing obeys: set by the owner in the control plane, never by a hello.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the runner's last hello claimed: shown, never trusted.
    reported_labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hardware: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The cost model routing and billing read, {"usd_per_hour": x}: proposed by the first
    # hello, then only the owner changes it (store.runners.update_runner).
    cost: Mapped[dict[str, Any]] = mapped_column(default=dict)
    capacity: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class ServedModel(Base):
    __tablename__ = "served_models"
    __table_args__ = (UniqueConstraint("runner_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    runner_id: Mapped[str] = mapped_column(ForeignKey("runners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    engine: Mapped[str] = mapped_column(String(64))
    context_length: Mapped[int | None] = mapped_column(Integer, default=None)
    quantization: Mapped[str | None] = mapped_column(String(64), default=None)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestRecord(Base):
    """One inference request. Never holds prompt or completion text."""

    __tablename__ = "request_records"
    __table_args__ = (Index("ix_request_records_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    model: Mapped[str] = mapped_column(String(200))
    runner_id: Mapped[str | None] = mapped_column(String(40), index=True, default=None)
    # The deployment whose replica answered (docs/deployments.md "Comparison"); None: a static
    # model, or a record older than migration 0008.
    deployment_id: Mapped[str | None] = mapped_column(String(40), default=None)
    endpoint: Mapped[str] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    e2e: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer)
    error_type: Mapped[str | None] = mapped_column(String(64), default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    queue_ms: Mapped[float | None] = mapped_column(Float, default=None)
    ttft_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_ms: Mapped[float | None] = mapped_column(Float, default=None)
    engine_share_s: Mapped[float | None] = mapped_column(Float, default=None)
    cost_usd: Mapped[float | None] = mapped_column(Float, default=None)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Budget(Base):
    """A spending cap for a tenant, or for one of its API keys when ``api_key_id`` is set."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), default=None
    )
    period: Mapped[str] = mapped_column(String(16))  # day | week | month
    amount_usd: Mapped[float] = mapped_column(Float)
    soft_threshold: Mapped[float] = mapped_column(Float, default=0.8)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A console user. Passwords are argon2 hashes."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    # owner | admin | operator | developer | viewer | auditor (control_plane.permissions)
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FairnessRun(Base):
    """One bias-probe run: suite identity, model, sampling settings and the report."""

    __tablename__ = "fairness_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    suite_id: Mapped[str] = mapped_column(String(200))
    suite_version: Mapped[str] = mapped_column(String(64))
    suite_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running")
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


# --- Audit log (docs/audit.md). Timestamps here are the ISO strings that were
# hashed or signed, stored verbatim so re-hashing never depends on how a
# database round-trips a datetime. tenant_id has no foreign key on purpose:
# the log must outlive the rows it talks about.


class AuditEvent(Base):
    """One hash-chained event. Append-only; ``seq`` is contiguous from 1."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_seq", "tenant_id", "seq"),
        UniqueConstraint("tenant_id", "tenant_seq", name="uq_audit_events_tenant_seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # The tenant's own contiguous sequence (NULL on events written before it existed), so a
    # tenant sees a gap where one of its events is missing or shown to it as redacted.
    tenant_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Random per event, so a redacted event's digest cannot be confirmed by guessing its content.
    salt: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row (id 1) every append locks: the chain's tip, last checkpoint and prune
    anchor."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    checkpoint_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_ts: Mapped[str | None] = mapped_column(String(32), default=None)
    # Events up to anchor_seq were pruned; the checkpoint at anchor_seq starts the chain.
    anchor_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditTenantHead(Base):
    """The last ``tenant_seq`` given to each tenant ('' for the log's own tenant-less events).

    Written only under the ``audit_head`` lock; survives pruning, so numbering never restarts.
    """

    __tablename__ = "audit_tenant_heads"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditCheckpoint(Base):
    """A signature over (seq, head hash) by one of the control plane's audit keys."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class AuditKey(Base):
    """A public audit key, kept forever so old checkpoints still verify.

    A rotated-in key carries the rotation record, signed by both keys.
    """

    __tablename__ = "audit_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    prev_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    prev_public_key: Mapped[str | None] = mapped_column(String(64), default=None)
    rotated_at: Mapped[str | None] = mapped_column(String(32), default=None)
    prev_signature: Mapped[str | None] = mapped_column(String(128), default=None)
    signature: Mapped[str | None] = mapped_column(String(128), default=None)


class Deployment(Base):
    """A model the control plane asks runners of one pool to serve (issue 22, docs/deployments.md).

    ``generation`` grows with every change of what replicas run (source, engine,
    options): replicas of an older generation are replaced one by one.
    """

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    pool_id: Mapped[str] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    # The public model name clients ask for; two deployments may share it (A/B by weight).
    name: Mapped[str] = mapped_column(String(200), index=True)
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    # {"kind": "path"|"url"|"hf", ...}: where the runner fetches the model (sdk.protocol).
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    engine: Mapped[str] = mapped_column(String(32), default="auto")
    engine_options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Label constraints on the runners that may hold a replica: {"label": ["allowed", ...]}.
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    # The number of replicas wanted now, min_replicas <= replicas <= max_replicas.
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    # Traffic share among deployments serving the same public name.
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # Bumped by every reconcile pass that places replicas, from the value it read: a pass
    # whose bump matches no row lost the race and places nothing (migration 0009).
    placement_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # "active" | "deleting" (replicas are being undeployed; the row goes when none is left).
    status: Mapped[str] = mapped_column(String(16), default="active")
    # Scale to zero: with min_replicas 0, unload after this many idle seconds (NULL: never).
    idle_timeout_s: Mapped[int | None] = mapped_column(Integer, default=None)
    last_request_at: Mapped[datetime | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentReplica(Base):
    """One replica of a deployment on one runner; its state is what the runner last reported."""

    __tablename__ = "deployment_replicas"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    runner_id: Mapped[str] = mapped_column(ForeignKey("runners.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # pending | downloading | loading | ready | failed | draining | stopped (sdk.protocol).
    state: Mapped[str] = mapped_column(String(16), default="pending")
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str | None] = mapped_column(String(512), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
