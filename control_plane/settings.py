"""Control-plane settings, declared once.

Every option lives here; the CLI and the app read this class, never their own
copies. Environment variables use the ``OUTPOST_`` prefix
(``OUTPOST_DATABASE_URL``, ``OUTPOST_PORT``...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outpost.control_plane.permissions import Role
from outpost.sdk.logfmt import LogLevel
from outpost.sdk.pins import parse_pin

__all__ = ["Settings", "default_state_dir"]


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "outpost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_", extra="ignore")

    state_dir: Path = Field(default_factory=default_state_dir, description="Keys, SQLite DB, logs.")
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means SQLite in the state directory. "
        "PostgreSQL: postgresql+psycopg://user@host/db",
    )
    host: str = Field(
        default="127.0.0.1", description="Bind address (0.0.0.0 to accept remote runners)."
    )
    port: int = Field(
        default=8080, ge=0, le=65535, description="HTTP port of the API, console and tunnel."
    )
    public_url: str = Field(
        default="", description="URL clients and runners use; derived if empty."
    )

    # TLS served by uvicorn itself (docs/deploy.md "TLS"); empty: plain HTTP, for a terminating
    # proxy in front.
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate chain (leaf first) to serve "
        "HTTPS/WSS with; its key's pin rides in enrollment tokens.",
    )
    tls_keyfile: Path | None = Field(
        default=None,
        description="PEM private key of --tls-certfile (default: in the certificate file).",
    )
    tls_client_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle that signs client certificates (mTLS); needs tls_certfile.",
    )
    tls_client_auth: Literal["none", "optional", "required"] = Field(
        default="none",
        description="Client certificates: required refuses any TLS connection without one "
        "signed by tls_client_ca (API clients included: one port); optional checks those "
        "presented.",
    )
    tls_token_pin: str = Field(
        default="",
        description="Key pin (sha256/BASE64) enrollment tokens carry when a "
        "terminating proxy serves TLS for this control plane; default: the pin of "
        "tls_certfile, none without it.",
    )

    # Request limits (OWASP API4: bound everything).
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body (413 above)."
    )
    max_tokens_limit: int = Field(default=8192, ge=1, description="Largest max_tokens accepted.")
    max_choices: int = Field(
        default=16,
        ge=1,
        le=128,
        description="Largest n (and best_of) accepted; each choice is admitted and billed alone.",
    )
    request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest a request may run end to end."
    )
    first_byte_timeout_s: float = Field(
        default=120.0, gt=0, description="Wait for a runner's first byte before failing over."
    )
    stream_headers_after_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="A streamed request not answered by then gets its headers and keep-alives.",
    )
    stream_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="Interval of SSE ': keep-alive' comments while a stream waits (proxies).",
    )
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Failover attempts before the first byte."
    )
    runner_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=120,
        description="How long a request waits for a runner of its model to (re)connect.",
    )

    # Routing (docs/api.md).
    routing_strategy: Literal["policy", "round_robin"] = Field(
        default="policy",
        description="round_robin ignores policies, load and affinity: a benchmark baseline.",
    )
    routing_affinity: bool = Field(
        default=True,
        description="Send a conversation back to the runner that "
        "served its leading prompt (prefix-cache reuse), within bounded load.",
    )
    routing_affinity_epsilon: float = Field(
        default=0.25, ge=0, le=10, description="Bounded-load slack of prefix affinity."
    )

    # Tunnel.
    tunnel_handshake_timeout_s: float = Field(
        default=10.0, gt=0, description="A runner must finish its hello in this time."
    )
    tunnel_ping_interval_s: float = Field(
        default=5.0, gt=0, description="WebSocket ping interval on tunnels."
    )
    tunnel_ping_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A tunnel whose pong is this late is dead (interval + timeout ≤ 15 s).",
    )
    tunnel_max_streams_per_connection: int = Field(
        default=256, ge=1, description="Concurrent streams on one tunnel connection."
    )
    tunnel_stream_window: int = Field(
        default=256 * 1024,
        ge=16 * 1024,
        le=16 * 1024 * 1024,
        description="Flow-control window per stream (characters of data).",
    )
    tunnel_max_connections_per_runner: int = Field(
        default=16,
        ge=1,
        le=65,
        description="Tunnel connections one "
        "runner may hold on this control plane at once; one more is "
        "closed with 4010 DUPLICATE, as is a second connection with the "
        "same `connection_index`.",
    )
    enrollment_token_ttl_s: int = Field(
        default=3600, ge=60, description="Lifetime of a one-time enrollment token."
    )

    # Audit log (docs/audit.md).
    audit_key_file: Path | None = Field(
        default=None,
        description="Ed25519 audit signing key (JSON, mode 0600); empty means "
        "<state_dir>/audit-key.json. "
        "Replicas on one database should share one key file.",
    )
    audit_checkpoint_every_n: int = Field(
        default=1000,
        ge=1,
        description="Sign an audit checkpoint once this many events are unsigned.",
    )
    audit_checkpoint_every_s: float = Field(
        default=60.0,
        gt=0,
        description="Sign an audit checkpoint at least this often while events arrive.",
    )

    # Fair scheduling and budgets (docs/cost.md).
    scheduler_policy: Literal["vtc", "fcfs"] = Field(
        default="vtc",
        description="How queued requests of different tenants share a runner: the Virtual "
        "Token Counter, or first come first served (a benchmark baseline).",
    )
    scheduler_max_queue: int = Field(
        default=256,
        ge=0,
        le=100_000,
        description="Requests that may wait for one runner; more get 429 queue_full.",
    )
    scheduler_max_queue_per_tenant: int | None = Field(
        default=None,
        ge=0,
        description="Requests one tenant may have waiting for one runner (empty: no limit).",
    )
    scheduler_queue_timeout_s: float = Field(
        default=300.0, gt=0, description="Longest wait for a runner slot; then 503 queue_timeout."
    )
    budget_cache_s: float = Field(
        default=1.0, ge=0, le=30, description="How long budget rows and spending sums are reused."
    )
    fairness_window_s: float = Field(
        default=60.0, gt=0, description="Window of GET /api/fairness/service."
    )

    # The request path's database work (docs/performance.md).
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a verified API key is reused without reading the "
        "database. Changes through this process apply at once; a revocation through another "
        "replica without Redis, or the CLI, within this. 0 turns the cache off.",
    )
    auth_cache_size: int = Field(
        default=10_000, ge=0, description="Most API keys cached (least recently used go first)."
    )
    records_queue_max: int = Field(
        default=10_000,
        ge=1,
        description="Request records that may wait to be "
        "written; while this many wait, new requests get 503 records_backlog.",
    )
    records_batch_max: int = Field(
        default=256,
        ge=1,
        le=1000,
        description="Most request records (and their audit events) written in one transaction.",
    )
    records_linger_s: float = Field(
        default=0.003,
        ge=0,
        le=10,
        description="How long a batch of request records "
        "may wait after its first record for more to join it (one transaction for all), "
        "only while records come less than this far apart. Records that queue while a "
        "batch commits go in the next one anyway (group commit); the end of a response "
        "waits for its record's batch, so this adds to that wait.",
    )
    records_commit_wait_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long the end of a "
        "response (`[DONE]`, or an unstreamed body) waits for its request record "
        "and audit event to commit; past it the response completes and the record "
        "stays queued (then a crash may lose it).",
    )
    records_retry_max_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Longest pause between retries "
        "while the database cannot take request records (nothing is dropped).",
    )
    records_drain_s: float = Field(
        default=30.0,
        ge=0,
        description="At shutdown, how long to wait for queued request records to be written.",
    )
    records_spill_file: Path | None = Field(
        default=None,
        description="Where request records still unwritten at shutdown are saved (JSON lines, mode "
        "0600) and replayed from at the next start; empty means "
        "<state_dir>/unwritten-records.jsonl.",
    )

    # Several replicas (docs/deploy.md): Redis relays requests to the replica holding a runner's
    # tunnel.
    redis_url: str = Field(
        default="",
        description="Redis URL (redis://host:6379/0) shared by control-plane "
        "replicas; empty means a single process and no Redis.",
    )
    cluster_key_prefix: str = Field(
        default="outpost",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Prefix of every Redis key; deployments sharing a Redis differ in it.",
    )
    cluster_heartbeat_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="How often a replica publishes "
        "the runners it holds and reads the other replicas'.",
    )
    cluster_replica_ttl_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="A replica silent this long is "
        "dead: requests relayed to it fail over, its runners are forgotten.",
    )

    log_level: LogLevel = Field(default="info", description="debug, info, warning or error.")
    # Observability (docs/deploy.md "Metrics and logs").
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text for people; json: one object per line with the request id, for "
        "log pipelines.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token GET /metrics requires; empty: /metrics is open (keep the port "
        "on the operator's network). docs/security.md.",
    )

    # Console single sign-on (docs/console.md "Single sign-on"): OpenID Connect, code flow with
    # PKCE.
    oidc_issuer: str = Field(
        default="",
        description="OpenID Connect issuer URL (its discovery document is "
        "<issuer>/.well-known/openid-configuration); empty: no single sign-on.",
    )
    oidc_client_id: str = Field(default="", description="This console's client id at the provider.")
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="Client secret (confidential client); empty: a public client, PKCE only.",
    )
    oidc_client_secret_file: Path | None = Field(
        default=None,
        description="File holding the client secret "
        "(a mounted Secret); wins over OUTPOST_OIDC_CLIENT_SECRET.",
    )
    oidc_scopes: str = Field(
        default="openid email profile", description="Scopes asked for, space-separated."
    )
    oidc_provider_name: str = Field(
        default="single sign-on",
        max_length=60,
        description="Shown on the sign-in button: 'Sign in with <name>'.",
    )
    oidc_email_claim: str = Field(
        default="email",
        description="ID-token claim naming the person (the user's "
        "email; matched to existing console users).",
    )
    oidc_tenant_claim: str = Field(
        default="",
        description="ID-token claim naming the user's tenant; empty: "
        "every SSO user is in OUTPOST_OIDC_DEFAULT_TENANT. The tenant must exist.",
    )
    oidc_default_tenant: str = Field(
        default="default", description="Tenant of SSO users when no tenant claim is configured."
    )
    oidc_role_claim: str = Field(
        default="groups",
        description="ID-token claim (a string or a list) mapped to "
        "a console role by OUTPOST_OIDC_ROLE_MAP.",
    )
    oidc_role_map: dict[str, Role] = Field(
        default_factory=dict,
        description='JSON object: claim value -> role, e.g. {"outpost-admins": "owner", '
        '"sre": "operator", "staff": "viewer"}; the most powerful role matched wins '
        "(owner, admin, operator, developer, viewer, auditor).",
    )
    oidc_default_role: Role | Literal[""] = Field(
        default="",
        description="Role when no claim value matches the map; empty: such a person is refused.",
    )
    oidc_allow_local_passwords: bool = Field(
        default=True,
        description="false: the console refuses password "
        "sign-in (single sign-on only; the CLI still manages users). Ignored "
        "while OUTPOST_OIDC_ISSUER is empty, so nobody is locked out.",
    )
    oidc_jwks_min_refresh_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Shortest time between two "
        "refetches of the provider's keys caused by an unknown key id.",
    )

    # Deployments (docs/deployments.md).
    deployment_reconcile_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="How often the reconciler compares deployments with their replicas "
        "(it also runs at once after a change or a runner's connect).",
    )
    deployment_drain_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Streams of an undeployed replica may run this long before it stops.",
    )
    deployment_runner_grace_s: float = Field(
        default=15.0,
        ge=0,
        le=3600,
        description="A runner away this long loses its replicas, which are placed elsewhere; "
        "back sooner, it keeps them (it reports them again on reconnect).",
    )
    deployment_wake_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=600,
        description="A request for a deployment scaled to zero waits this long for it to "
        "wake (streams get SSE keep-alive comments), then is a 503 deployment_waking.",
    )
    deployment_scale_up_after_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Requests queued this long without a break for a deployment's ready "
        "replicas add one replica, up to its max_replicas.",
    )

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.state_dir / 'outpost.db'}"
        if self.tls_client_auth != "none" and (
            self.tls_client_ca is None or self.tls_certfile is None
        ):
            raise ValueError("tls_client_auth needs tls_certfile and tls_client_ca")
        if self.tls_token_pin:
            self.tls_token_pin = parse_pin(self.tls_token_pin)
        if (self.tls_keyfile or self.tls_client_ca) and self.tls_certfile is None:
            raise ValueError("tls_keyfile and tls_client_ca need tls_certfile")
        if not self.public_url:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            scheme = "https" if self.tls_certfile else "http"
            self.public_url = f"{scheme}://{host}:{self.port}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
