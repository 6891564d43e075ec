"""Wire schemas of the audit API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuditEventOut", "AuditPage", "AuditQuery", "CheckpointQuery"]


class AuditQuery(BaseModel):
    """Filters of ``GET /api/audit``. Unknown parameters are refused (there is no tenant parameter:
    the tenant is always the caller's)."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9_.]+$",
        description="Event type, or a prefix of dotted types: 'admin' matches 'admin.*'.",
    )
    actor: str | None = Field(
        default=None, max_length=200, description="Exact actor, e.g. 'key:key_...'."
    )
    since: datetime | None = Field(
        default=None, description="Events at or after this time (naive = UTC)."
    )
    until: datetime | None = Field(
        default=None, description="Events before this time (naive = UTC)."
    )
    # A seq; at most 2**53 - 1 like CheckpointQuery.after (a 20-digit one overflowed SQLite's
    # 64-bit INTEGER and answered 500; schemathesis found it).
    cursor: str | None = Field(
        default=None,
        max_length=16,
        pattern=r"^[0-9]+$",
        description="Opaque: the next_cursor of the previous page.",
    )
    limit: int = Field(default=100, ge=1, le=1000)

    @field_validator("cursor")
    @classmethod
    def _seq_range(cls, value: str | None) -> str | None:
        if value is not None and int(value) > 2**53 - 1:
            raise ValueError("cursor is not one this API hands out")
        return value

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class CheckpointQuery(BaseModel):
    """Paging of ``GET /api/audit/checkpoints``: those after ``after`` (a seq; the previous page's
    ``next_cursor``), oldest first."""

    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=0, ge=0, le=2**53 - 1)
    limit: int = Field(default=1000, ge=1, le=1000)


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    ts: str
    type: str
    actor: str
    tenant_id: str | None
    tenant_seq: int | None = None
    data: dict[str, Any]
    hash: str


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEventOut]
    next_cursor: str | None = None
