"""Replay protection for sealed requests.

HPKE base mode does not stop a relay from delivering one envelope twice, and
a second run of a prompt costs the runner compute and gives an observer a
second look at its timing. The guard remembers envelope ids for
``max_age_s`` and refuses anything older, so memory is bounded by the
request rate times that window; ``max_entries`` bounds it absolutely.

When ``max_entries`` is reached the oldest id is forgotten and the
acceptance floor rises to its timestamp: every envelope at or below the
floor is refused as stale, so forgetting an id never re-admits its replay.
Under overload the guard thus shortens its window instead of failing open.

Memory does not survive a restart. A runner passes ``not_before`` = its
start time so envelopes sealed before it started (whose ids it may have
seen in a previous life) are refused as stale; clients reseal and retry.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from .errors import ReplayError, StaleEnvelopeError

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """Accept each envelope id once, within a bounded age window."""

    def __init__(
        self,
        *,
        max_age_s: float = 300.0,
        max_future_s: float = 30.0,
        max_entries: int = 100_000,
        not_before: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_age_s <= 0 or max_future_s < 0 or max_entries < 1:
            raise ValueError("max_age_s > 0, max_future_s >= 0 and max_entries >= 1 required")
        self._max_age_ms = int(max_age_s * 1000)
        self._max_future_ms = int(max_future_s * 1000)
        self._max_entries = max_entries
        self._clock = clock
        self._heap: list[tuple[int, bytes]] = []
        self._seen: set[bytes] = set()
        # Envelopes issued at or before the floor are refused as stale.
        self._floor_ms = -1 if not_before is None else round(not_before * 1000)
        # open_request may run in worker threads (large bodies); keep check atomic.
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Envelope ids held now (not ``__len__``: an empty guard must stay truthy)."""
        return len(self._seen)

    def check(self, envelope_id: bytes, issued_at: float) -> None:
        """Record ``envelope_id`` or raise :class:`ReplayError` / :class:`StaleEnvelopeError`."""
        ts = round(issued_at * 1000)
        with self._lock:
            now = int(self._clock() * 1000)
            self._expire(now - self._max_age_ms)
            if ts < now - self._max_age_ms:
                raise StaleEnvelopeError(f"envelope is {(now - ts) / 1000:.1f} s old")
            if ts > now + self._max_future_ms:
                raise StaleEnvelopeError(f"envelope is {(ts - now) / 1000:.1f} s in the future")
            if ts <= self._floor_ms:
                raise StaleEnvelopeError("envelope older than the replay window (load or restart)")
            if envelope_id in self._seen:
                raise ReplayError("envelope was already opened")
            if len(self._seen) >= self._max_entries:
                if ts <= self._heap[0][0]:
                    raise StaleEnvelopeError("envelope older than the replay window under load")
                self._forget()
            heapq.heappush(self._heap, (ts, envelope_id))
            self._seen.add(envelope_id)

    def _expire(self, oldest_ms: int) -> None:
        while self._heap and self._heap[0][0] < oldest_ms:
            self._forget()

    def _forget(self) -> None:
        ts, envelope_id = heapq.heappop(self._heap)
        self._seen.discard(envelope_id)
        self._floor_ms = max(self._floor_ms, ts)
