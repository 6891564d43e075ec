"""Per-key request rate limits: a token bucket per API key.

A key limited to ``rpm`` requests per minute owns a bucket of ``rpm`` tokens
that refills continuously at ``rpm / 60`` tokens per second; a request takes
one token or is refused with the time until one is back. A full bucket lets a
client that was idle burst up to one minute's allowance, as OpenAI's
per-minute limits do.

:class:`RateLimiter` is the seam: :class:`TokenBucketLimiter` keeps buckets
in this process (one control plane); several replicas need a shared store —
a Redis implementation of the same protocol (GCRA in one Lua script, keyed by
the API key id) slots in without touching the request path.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["RateDecision", "RateLimiter", "TokenBucketLimiter"]


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int  # requests per minute
    remaining: int  # whole requests left in the bucket after this one
    retry_after_s: float  # 0 when allowed
    reset_s: float  # until the bucket is full again

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up: a client that waits that long will get in."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter(Protocol):
    async def acquire(self, key: str, rpm: int) -> RateDecision:
        """Take one request from ``key``'s allowance of ``rpm`` per minute."""
        ...


class TokenBucketLimiter:
    """In-process buckets; the least recently used are dropped past ``max_keys``.

    Dropping a bucket forgets a key's debt, which errs on the side of
    serving: with ``max_keys`` far above the number of active keys, only keys
    idle long enough to have refilled anyway are dropped.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    async def acquire(self, key: str, rpm: int) -> RateDecision:
        return self.take(key, rpm)

    def take(self, key: str, rpm: int) -> RateDecision:
        if rpm <= 0:
            return RateDecision(False, rpm, 0, 60.0, 60.0)
        now = self._clock()
        rate = rpm / 60.0  # tokens per second
        tokens, at = self._buckets.get(key, (float(rpm), now))
        tokens = min(float(rpm), tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        retry = 0.0 if allowed else (1.0 - tokens) / rate
        return RateDecision(allowed, rpm, int(tokens), retry, (rpm - tokens) / rate)
