"""Wire schemas of the control plane's own (non-OpenAI) API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RegisterRunnerIn", "RegisterRunnerOut", "RunnerOut"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RegisterRunnerIn(_In):
    identity_public_key: str = Field(min_length=43, max_length=44, pattern=r"^[A-Za-z0-9_-]+$")
    hpke_public_key: str | None = Field(default=None, max_length=2048)
    hpke_key_signature: str | None = Field(default=None, max_length=256)


class RegisterRunnerOut(_Out):
    runner_id: str
    tenant_id: str
    name: str


class EngineSlotsOut(_Out):
    models: list[str]
    capacity: int
    headroom: int = 0


class RunnerOut(_Out):
    id: str
    name: str
    pool_id: str
    #: Residency labels set by the owner: the ones routing obeys.
    labels: dict[str, Any]
    #: Labels the runner's last hello claimed: shown, never trusted.
    reported_labels: dict[str, Any] = Field(default_factory=dict)
    #: The owner-set price routing and billing use (services/cost.hourly_rate of the cost model).
    usd_per_hour: float | None = None
    capacity: int
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None
    connected: bool = False
    models: list[str] = Field(default_factory=list)
    #: Of ``models``, those whose engine the runner reports down (restarting, loading, hung).
    unavailable_models: list[str] = Field(default_factory=list)
    #: Engine slots beyond ``capacity`` for tenants with nothing in flight (fair headroom).
    headroom: int = 0
    #: A runner with several engines: each one's models, slots and headroom (admission is per
    #: engine).
    engines: list[EngineSlotsOut] = Field(default_factory=list)
    in_flight: int = 0
    served_total: int = 0
