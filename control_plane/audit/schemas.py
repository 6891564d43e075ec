"""Wire schemas of the audit API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuditEventOut", "AuditPage", "AuditQuery"]


class AuditQuery(BaseModel):
    """Filters of ``GET /api/audit``. Unknown parameters are refused (there is no tenant parameter:
    the tenant is always the caller's)."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(default=None, max_length=64, pattern=r"^[a-z0-9_.]+$",
                             description="Event type, or a prefix of dotted types: 'admin' matches 'admin.*'.")
    actor: str | None = Field(default=None, max_length=200, description="Exact actor, e.g. 'key:key_...'.")
    since: datetime | None = Field(default=None, description="Events at or after this time (naive = UTC).")
    until: datetime | None = Field(default=None, description="Events before this time (naive = UTC).")
    cursor: str | None = Field(default=None, max_length=20, pattern=r"^[0-9]+$",
                               description="Opaque: the next_cursor of the previous page.")
    limit: int = Field(default=100, ge=1, le=1000)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    ts: str
    type: str
    actor: str
    tenant_id: str | None
    data: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEventOut]
    next_cursor: str | None = None
