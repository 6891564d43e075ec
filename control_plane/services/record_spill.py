"""Request records the database could not take before shutdown: kept on disk, replayed at the next
start.

The record writer retries a down database for as long as the process lives;
only a shutdown ends that, after ``records_drain_s``. What is still queued
then goes to one JSON-lines file in the state directory (mode 0600: records
name tenants and keys), flushed to disk, and the next start queues it again
ahead of new requests. A line is a record's columns; ``created_at`` is ISO
8601. Replays are idempotent: records the database already holds (a commit
whose answer was lost, a spill appended twice) are skipped by id.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["load_spilled", "spill"]

log = logging.getLogger("outpost.records")

_DATETIME_FIELDS = ("created_at",)


def spill(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append ``rows`` (record columns) to ``path``, durably; return how many."""
    lines = [
        json.dumps(
            {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()},
            separators=(",", ":"),
        )
        + "\n"
        for row in rows
    ]
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    return len(lines)


def load_spilled(path: Path) -> list[dict[str, Any]]:
    """The rows in ``path``, one per record id (the last copy wins); unreadable lines are logged
    and skipped."""
    rows: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                for key in _DATETIME_FIELDS:
                    if isinstance(row, dict) and isinstance(row.get(key), str):
                        row[key] = datetime.fromisoformat(row[key])
            except ValueError as exc:  # json.JSONDecodeError is one: a torn last line after a crash
                log.error("%s line %d is not a request record (%s); skipped", path, n, exc)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                log.error("%s line %d is not a request record; skipped", path, n)
                continue
            rows[row["id"]] = row
    return list(rows.values())
