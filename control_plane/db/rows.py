"""A request record on its way to the database, as a plain object.

Every inference request ends with one. Built as the ORM's
:class:`~outpost.control_plane.db.models.RequestRecord`, its instrumented
constructor and attribute sets were 4–5 % of the control plane's main thread
per short request (py-spy, docs/performance.md), for an object the record
writer only reads: it inserts with Core statements (or plain ``sqlite3``),
never through a session. :class:`RequestRow` has the same fields, and a test
keeps the two in step (tests/request_path/test_record_writer.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

__all__ = ["RequestRow"]


@dataclass(slots=True)
class RequestRow:
    """The columns of ``request_records``; ``None`` takes the column's default when inserted."""

    id: str
    tenant_id: str
    model: str
    endpoint: str
    status: str
    http_status: int
    api_key_id: str | None = None
    runner_id: str | None = None
    deployment_id: str | None = None
    stream: bool = False
    e2e: bool = False
    error_type: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    queue_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    engine_share_s: float | None = None
    cost_usd: float | None = None
    bytes_out: int = 0
    created_at: datetime | None = None

    def fields(self) -> dict[str, Any]:
        """The fields that are set (not ``None``): for logs, spill files and copies."""
        return {key: value for key, value in asdict(self).items() if value is not None}
