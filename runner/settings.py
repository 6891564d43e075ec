"""Runner settings, declared once; the CLI is derived from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, CliImplicitFlag, CliSuppress, SettingsConfigDict

from outpost.runner.model_refs import parse_model_ref
from outpost.sdk.logfmt import LogLevel
from outpost.sdk.pins import parse_pin

__all__ = ["SECRET_FLAGS", "RunnerSettings", "default_runner_state_dir"]

SECRET_FLAGS = ("--enrollment-token", "--attach-api-key", "--proxy-auth")


def default_runner_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "outpost-runner"


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_", extra="ignore")

    control_plane: str = Field(
        default="http://127.0.0.1:8080", description="Control plane base URL."
    )
    state_dir: Path = Field(
        default_factory=default_runner_state_dir,
        description="Identity keys (mode 0600) and engine logs.",
    )
    # Secrets come from the environment or a file, never argv (process titles leak).
    enrollment_token: Annotated[SecretStr | None, CliSuppress] = Field(
        default=None, description="One-time token (OUTPOST_ENROLLMENT_TOKEN only)."
    )
    token_file: Path | None = Field(default=None, description="File holding the enrollment token.")
    name: str = Field(default="", description="Runner name (informational; the token fixes it).")
    model: list[str] = Field(
        default_factory=list,
        description=(
            "Model to serve: PATH_OR_ID, or NAME=PATH_OR_ID to choose its public id; repeat the "
            "flag to serve several, one engine each (default: embedded SmolLM2)."
        ),
    )
    served_model_name: str | None = Field(
        default=None, max_length=200, description="Public name of the model (default: derived)."
    )
    model_alias: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="More public names of the model (repeat the flag).",
    )
    embedding: CliImplicitFlag[bool] = Field(
        default=False,
        description="Also serve /v1/embeddings (llama.cpp embedding mode, mean pooling).",
    )
    rerank: CliImplicitFlag[bool] = Field(
        default=False,
        description="Also serve /v1/rerank (llama.cpp reranking mode: a reranker model, "
        "rank pooling; not with --embedding).",
    )
    engine: str | None = Field(
        default=None, description="Force an engine: xllamacpp, llama-cpp-python, vllm."
    )
    attach: str | None = Field(
        default=None, description="URL of an OpenAI-compatible engine to attach to."
    )
    attach_api_key: Annotated[SecretStr | None, CliSuppress] = Field(
        default=None, description="API key of the attached engine (OUTPOST_ATTACH_API_KEY only)."
    )
    connections: int = Field(default=2, ge=1, le=16, description="Tunnel connections to keep open.")
    # How the runner trusts the control plane and gets out to it (docs/deploy.md "TLS" and
    # "Proxies").
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the CAs that may sign the control "
        "plane's certificate (a private CA); default: the system trust store.",
    )
    client_cert: Path | None = Field(
        default=None,
        description="PEM client certificate (chain) shown to a control plane that requires mTLS.",
    )
    client_key: Path | None = Field(
        default=None,
        description="PEM private key of --client-cert (default: in the --client-cert file).",
    )
    pin_sha256: list[str] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Pinned control-plane public key, sha256/BASE64 of its SubjectPublicKeyInfo (repeat "
            "for a backup key). Replaces the pin an enrollment token carried; a mismatch stops "
            "the runner."
        ),
    )
    proxy: str = Field(
        default="",
        description="HTTP CONNECT proxy to reach the control plane through "
        "(http://host:port); empty: HTTPS_PROXY/HTTP_PROXY and NO_PROXY; 'direct': no proxy.",
    )
    proxy_auth: Annotated[SecretStr | None, CliSuppress] = Field(
        default=None, description="user:password for --proxy (OUTPOST_PROXY_AUTH only)."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="site/region/zone labels.")
    parallel: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Requests the control plane sends at once "
        "(default: planned); a started engine gets --headroom slots more.",
    )
    headroom: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description="Engine slots kept for tenants with nothing "
        "in flight, so a light tenant starts at once (default: 1 for an engine the runner "
        "starts, 0 attached; docs/fairness.md).",
    )
    ctx: int | None = Field(default=None, ge=256, description="Total context (default: planned).")
    threads: int = Field(default=0, ge=0, description="Engine CPU threads (0: engine default).")
    drain_s: float = Field(
        default=30.0, ge=0, description="Grace period for live streams on shutdown."
    )
    health_timeout_s: float = Field(
        default=300.0, gt=0, description="Time the engine may take to load."
    )
    # A running engine that hangs but stays alive is found by these checks (docs/runner.md).
    health_check_interval_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between health checks of a running engine."
    )
    health_check_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="A health check not answered within this fails."
    )
    health_check_failures: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Failed health checks in a row that mark an engine unavailable and restart it.",
    )
    ping_interval_s: float = Field(
        default=5.0, gt=0, description="WebSocket ping interval on the tunnel."
    )
    ping_timeout_s: float = Field(
        default=10.0, gt=0, description="Tunnel declared dead after this pong delay."
    )
    # Cost model sent in the hello (docs/cost.md): a stated rate, else power x price, else the class
    # default.
    usd_per_hour: float | None = Field(
        default=None, ge=0, description="Cost rate of this machine, $/hour."
    )
    usd_per_kwh: float | None = Field(
        default=None, ge=0, description="Electricity price: cost this runner as power x price."
    )
    watts: float | None = Field(
        default=None,
        gt=0,
        description="Power draw for --usd-per-kwh "
        "(default: GPU/CPU power limits read from NVML/RAPL, else the class TDP).",
    )
    pue: float = Field(
        default=1.0, ge=1.0, le=3.0, description="Power usage effectiveness for --usd-per-kwh."
    )
    hardware_class: str | None = Field(
        default=None,
        description="Cost class for the default rate "
        "(cpu-small, nvidia-h100, ...; default: detected).",
    )
    e2e_kem: Literal["x25519", "mlkem768-x25519"] = Field(
        default="x25519",
        description="KEM of the end-to-end key made on first start (hybrid: post-quantum).",
    )
    # Observability (docs/deploy.md "Metrics and logs"). The runner opens no port unless asked.
    log_level: LogLevel = Field(
        default="info",
        description="debug, info, warning or error (info: a line per request served).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text for people; json: one object per line with the request id.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics "
        "on this port (default: no listener; 0 picks a free port).",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address of the --metrics-port listener "
        "(loopback unless a scraper elsewhere must reach it).",
    )
    # Deployments (docs/deployments.md): the control plane may tell this runner what to serve.
    deployments: CliImplicitFlag[bool] = Field(
        default=True,
        description="Take deployments from the control plane (fetch and serve the models it "
        "names); --no-deployments: serve only the --model ones.",
    )
    model_dir: Path | None = Field(
        default=None,
        description="Folder a deployment's path source is read from, and URL downloads are "
        "kept in (default: STATE_DIR/models).",
    )
    deploy_http_hosts: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Hosts a deployment may download from over plain http (a mirror on the "
        "premises); https and loopback need no listing. The SHA-256 is checked either way.",
    )
    max_deployments: int = Field(
        default=8, ge=1, le=64, description="Replicas this runner holds at once."
    )
    e2e_pad_to: int = Field(
        default=0,
        ge=0,
        le=12224,
        description="Pad encrypted response chunks to a multiple of this many bytes (0: off).",
    )

    @property
    def models_dir(self) -> Path:
        """Where deployments read and download models."""
        return self.model_dir if self.model_dir is not None else self.state_dir / "models"

    @field_validator("deploy_http_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values if v.strip()]

    @field_validator("pin_sha256")
    @classmethod
    def _pins(cls, values: list[str]) -> list[str]:
        return [parse_pin(v) for v in values]

    @field_validator("model")
    @classmethod
    def _model_refs(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_model_ref(value)  # a bad NAME= fails here, before any model is read
        return values
