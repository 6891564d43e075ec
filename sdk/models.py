"""Typed responses of the Outpost API.

The OpenAI shapes keep unknown fields (``extra="allow"``): engines add their
own (llama.cpp's ``timings``, vLLM's ``prompt_logprobs``) and a client must
not break on them. The admin shapes mirror ``control_plane`` schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiKey",
    "AuditPage",
    "Budget",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CreatedApiKey",
    "Deployment",
    "DeploymentReplica",
    "E2ERunner",
    "Embedding",
    "EmbeddingResponse",
    "EnrollmentToken",
    "FairnessRun",
    "Model",
    "Pool",
    "PoolGrant",
    "PoolSharing",
    "Runner",
    "RunnerEngine",
    "Usage",
    "UsageReport",
    "UsageTotals",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatMessage(_Model):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(_Model):
    index: int = 0
    message: ChatMessage = Field(default_factory=ChatMessage)
    finish_reason: str | None = None


class ChatCompletion(_Model):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[ChatChoice] = Field(default_factory=list)
    usage: Usage | None = None


class ChatDelta(_Model):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Model):
    index: int = 0
    delta: ChatDelta = Field(default_factory=ChatDelta)
    finish_reason: str | None = None


class ChatCompletionChunk(_Model):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChatChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


class CompletionChoice(_Model):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None


class Completion(_Model):
    """A completion, or one chunk of a streamed one (same shape)."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: Usage | None = None


class Embedding(_Model):
    index: int = 0
    object: str = "embedding"
    embedding: list[float] = Field(default_factory=list)


class EmbeddingResponse(_Model):
    object: str = "list"
    model: str = ""
    data: list[Embedding] = Field(default_factory=list)
    usage: Usage | None = None


class Model(_Model):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "outpost"
    engine: str | None = None
    context_length: int | None = None


class RunnerEngine(_Model):
    """One engine of a runner that runs several: its models and its own slots."""

    models: list[str] = Field(default_factory=list)
    capacity: int = 1
    headroom: int = 0


class Runner(_Model):
    id: str
    name: str
    #: The runner's one pool, of its own tenant (None from a control plane that predates pools).
    pool_id: str | None = None
    #: Residency labels its owner set: what routing obeys.
    labels: dict[str, str] = Field(default_factory=dict)
    #: Labels the runner's hello claimed: shown, never trusted.
    reported_labels: dict[str, str] = Field(default_factory=dict)
    #: The owner-set price routing and billing use, $/hour.
    usd_per_hour: float | None = None
    capacity: int = 1
    created_at: datetime | None = None
    last_seen_at: datetime | None = None
    revoked_at: datetime | None = None
    connected: bool = False
    models: list[str] = Field(default_factory=list)
    #: Of ``models``, those whose engine the runner reports down (restarting, loading, hung):
    #: requests for them are not routed here. Empty from a control plane that predates it.
    unavailable_models: list[str] = Field(default_factory=list)
    #: Engine slots beyond ``capacity`` the control plane grants only to a tenant with
    #: nothing in flight there (fair headroom, docs/fairness.md). 0 from an older control plane.
    headroom: int = 0
    #: A runner with several engines: each one's models and slots (admission is per engine).
    #: Empty for a one-engine runner and from an older control plane.
    engines: list[RunnerEngine] = Field(default_factory=list)
    in_flight: int = 0
    served_total: int = 0


class Pool(_Model):
    """A set of one tenant's runners; requests of other tenants reach it only through a grant."""

    id: str
    name: str
    tenant_id: str
    created_at: datetime | None = None


class PoolGrant(_Model):
    id: str
    pool_id: str
    pool_name: str
    owner_tenant_id: str
    #: ``"*"``: every tenant (granted by the platform operator).
    grantee_tenant_id: str
    #: ``outgoing``: the caller owns the pool; ``incoming``: granted to the caller.
    direction: str
    granted_by: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None


class DeploymentReplica(_Model):
    """One replica of a deployment on one runner, as its runner last reported it."""

    id: str
    runner_id: str
    generation: int
    #: pending | downloading | loading | ready | failed | draining | stopped
    state: str
    bytes_done: int = 0
    bytes_total: int | None = None
    rate_bps: float = 0.0
    eta_s: float | None = None
    reason: str | None = None


class Deployment(_Model):
    """A model the control plane has runners of one pool serve (docs/deployments.md)."""

    id: str
    name: str
    aliases: list[str] = []
    pool_id: str
    source: dict[str, Any]
    engine: str
    engine_options: dict[str, Any] = {}
    labels: dict[str, list[str]] = {}
    min_replicas: int
    max_replicas: int
    replicas: int
    ready_replicas: int = 0
    weight: float = 1.0
    generation: int = 1
    #: active | deleting
    status: str = "active"
    idle_timeout_s: int | None = None
    replica_status: list[DeploymentReplica] = []


class PoolSharing(_Model):
    refuse_shared_pools: bool
    platform_operator: bool = False


class EnrollmentToken(_Model):
    token: str
    runner_name: str
    expires_at: datetime


class ApiKey(_Model):
    id: str
    name: str
    prefix: str = ""
    scopes: list[str] = Field(default_factory=list)
    #: What the key may administer (owner ... auditor, docs/security.md); None: inference only.
    role: str | None = None
    #: Model names and glob patterns it may call; None: every model its tenant can reach.
    allowed_models: list[str] | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyQuotas(_Model):
    """A key's quotas (docs/security.md, "Quotas"); None: no limit."""

    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None


class CreatedApiKey(ApiKey):
    key: str  # the secret: shown once, store it now


class E2ERunner(_Model):
    """A runner that can take sealed requests, with its (still unverified) key document."""

    runner_id: str
    name: str = ""
    models: list[str] = Field(default_factory=list)
    in_flight: int = 0
    key: dict[str, Any]


class UsageTotals(_Model):
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    engine_seconds: float = 0.0


class UsageReport(_Model):
    """``GET /api/usage``: a period's totals, and the same by key, model and runner.

    ``api_key_id`` is set when the caller is not an admin: it sees only its own requests.
    """

    tenant_id: str | None = None
    api_key_id: str | None = None
    period: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    total: UsageTotals = Field(default_factory=UsageTotals)
    by_key: list[dict[str, Any]] = Field(default_factory=list)
    by_model: list[dict[str, Any]] = Field(default_factory=list)
    by_runner: list[dict[str, Any]] = Field(default_factory=list)


class Budget(_Model):
    id: str
    scope: str  # tenant | key
    api_key_id: str | None = None
    period: str
    amount_usd: float
    soft_threshold: float = 0.8
    spent_usd: float = 0.0
    state: str = "ok"  # ok | soft | exceeded
    period_start: datetime | None = None
    period_end: datetime | None = None


class FairnessRun(_Model):
    id: str
    status: str | None = None
    model: str | None = None


class AuditPage(_Model):
    data: list[dict[str, Any]] = Field(default_factory=list)
    next_cursor: str | None = None
