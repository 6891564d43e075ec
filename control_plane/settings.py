"""Control-plane settings, declared once.

Every option lives here; the CLI and the app read this class, never their own
copies. Environment variables use the ``OUTPOST_`` prefix
(``OUTPOST_DATABASE_URL``, ``OUTPOST_PORT``...).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str = Field(default="", description="URL clients and runners use; derived if empty.")

    # Request limits (OWASP API4: bound everything).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_tokens_limit: int = Field(default=8192, ge=1, description="Largest max_tokens accepted.")
    request_timeout_s: float = Field(default=600.0, gt=0)
    first_byte_timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10, description="Failover attempts before the first byte.")
    runner_wait_s: float = Field(default=5.0, ge=0, le=120,
                                 description="How long a request waits for a runner of its model to (re)connect.")

    # Tunnel.
    tunnel_handshake_timeout_s: float = Field(default=10.0, gt=0)
    tunnel_ping_interval_s: float = Field(default=5.0, gt=0)
    tunnel_ping_timeout_s: float = Field(default=10.0, gt=0)
    tunnel_max_streams_per_connection: int = Field(default=256, ge=1)
    tunnel_stream_window: int = Field(default=256 * 1024, ge=16 * 1024, le=16 * 1024 * 1024,
                                      description="Flow-control window per stream (characters of data).")
    enrollment_token_ttl_s: int = Field(default=3600, ge=60)

    log_level: str = "info"

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.state_dir / 'outpost.db'}"
        if not self.public_url:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
            self.public_url = f"http://{host}:{self.port}"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
