"""Console options, declared once (environment: ``OUTPOST_CONSOLE_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_CONSOLE_", extra="ignore")

    session_ttl_s: int = Field(
        default=12 * 3600, ge=300, le=30 * 86400, description="How long a console sign-in lasts."
    )
    cookie_secure: bool | None = Field(
        default=None,
        description="Send cookies over HTTPS only; empty: when the public URL is https.",
    )
    lockout_attempts: int = Field(
        default=5, ge=1, le=100, description="Failed sign-ins in a row that lock an account."
    )
    lockout_s: int = Field(
        default=15 * 60, ge=1, le=86400, description="How long a locked account stays locked."
    )
    secret_file: Path | None = Field(
        default=None,
        description="Key that signs sessions and CSRF tokens (created, mode 0600); empty means "
        "<state_dir>/console-secret. Replicas must share it.",
    )
    min_password_length: int = Field(default=12, ge=8, le=128)
