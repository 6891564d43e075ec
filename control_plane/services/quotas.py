"""Token quotas and requests in flight, enforced at admission (issue 26).

Limits, each optional: tokens per minute and per day per API key and per
tenant (input and output tokens together), and requests in flight per key.
Windows are fixed and aligned: the current minute and the current UTC day,
so every replica (through Redis, ``cluster/quotas.py``) counts into the same
window without agreeing on anything but the clock Redis reads.

A request *reserves* an estimate at admission (its prompt, estimated, plus
the output cap it is sent with) in every window that limits it, or is
refused with 429 and ``Retry-After`` (the end of the window that refused it).
When it ends it *settles*: the difference between the estimate and the real
usage goes back to (or is taken from) the windows it reserved in. A request
whose estimate alone exceeds a limit can never pass; it is refused as
``request_too_large`` without ``Retry-After``.

:class:`MemoryQuotaStore` holds the counters in this process (one replica);
the Redis store has the same interface.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Counter",
    "MemoryQuotaStore",
    "QuotaRefusal",
    "QuotaStore",
    "Quotas",
    "Reservation",
    "Reserved",
    "counters_for",
]

log = logging.getLogger("outpost.quotas")

MINUTE_S = 60
DAY_S = 86_400
# A leaked in-flight slot (a replica that died mid-request) clears after this long.
CONCURRENCY_TTL_S = 3_600


@dataclass(frozen=True)
class Counter:
    """One limit a request counts against: ``name`` like ``key:<id>:minute``."""

    name: str
    limit: int
    seconds: int

    @property
    def label(self) -> str:
        scope, _, rest = self.name.partition(":")
        window = rest.rpartition(":")[2]
        return f"the {'API key' if scope == 'key' else 'tenant'}'s tokens per {window}"


@dataclass(frozen=True)
class Reserved:
    """What a store answers: whether it reserved, and each counter's state."""

    failed: int | None  # index of the counter that refused; None: reserved in all
    used: tuple[int, ...]  # each counter's tokens used (after the reservation, if made)
    indexes: tuple[int, ...]  # each counter's window number (now // seconds)
    now: float  # the store's clock, seconds


class QuotaStore(Protocol):
    async def reserve(self, counters: Sequence[Counter], amount: int) -> Reserved:
        """Add ``amount`` to every counter's current window, or to none if one would pass
        its limit."""
        ...

    async def adjust(self, counters: Sequence[Counter], indexes: Sequence[int], delta: int) -> None:
        """Add ``delta`` (may be negative) to the windows ``indexes`` that still exist."""
        ...

    async def enter(self, name: str, limit: int) -> bool:
        """Take one of ``limit`` slots of ``name``; ``False`` when all are taken."""
        ...

    async def leave(self, name: str) -> None: ...


class MemoryQuotaStore:
    """Counters in this process: exact for one control plane."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, int], int] = {}
        self._slots: dict[str, int] = {}

    def _prune(self, now: float) -> None:
        # Past windows are dead weight: drop them once in a while.
        if len(self._windows) > 10_000:
            self._windows = {
                (n, i): v for (n, i), v in self._windows.items() if (i + 2) * DAY_S > now
            }

    async def reserve(self, counters: Sequence[Counter], amount: int) -> Reserved:
        return self.reserve_now(counters, amount)

    def reserve_now(self, counters: Sequence[Counter], amount: int) -> Reserved:
        now = self._clock()
        self._prune(now)
        indexes = tuple(int(now // c.seconds) for c in counters)
        used = [self._windows.get((c.name, i), 0) for c, i in zip(counters, indexes, strict=True)]
        for n, (c, u) in enumerate(zip(counters, used, strict=True)):
            if u + amount > c.limit:
                return Reserved(n, tuple(used), indexes, now)
        for c, i in zip(counters, indexes, strict=True):
            self._windows[(c.name, i)] = self._windows.get((c.name, i), 0) + amount
        return Reserved(None, tuple(u + amount for u in used), indexes, now)

    async def adjust(self, counters: Sequence[Counter], indexes: Sequence[int], delta: int) -> None:
        for c, i in zip(counters, indexes, strict=True):
            if (c.name, i) in self._windows:
                self._windows[(c.name, i)] = max(0, self._windows[(c.name, i)] + delta)

    async def enter(self, name: str, limit: int) -> bool:
        if self._slots.get(name, 0) >= limit:
            return False
        self._slots[name] = self._slots.get(name, 0) + 1
        return True

    async def leave(self, name: str) -> None:
        left = self._slots.get(name, 0) - 1
        if left > 0:
            self._slots[name] = left
        else:
            self._slots.pop(name, None)


def counters_for(
    tenant_id: str,
    key_id: str,
    *,
    key_per_minute: int | None,
    key_per_day: int | None,
    tenant_per_minute: int | None,
    tenant_per_day: int | None,
) -> list[Counter]:
    limits = (
        (f"key:{key_id}:minute", key_per_minute, MINUTE_S),
        (f"key:{key_id}:day", key_per_day, DAY_S),
        (f"tenant:{tenant_id}:minute", tenant_per_minute, MINUTE_S),
        (f"tenant:{tenant_id}:day", tenant_per_day, DAY_S),
    )
    return [Counter(name, limit, s) for name, limit, s in limits if limit is not None]


@dataclass(frozen=True)
class QuotaRefusal:
    """Why a request was refused: for the 429 (or the ``request_too_large``) the door sends."""

    code: str  # token_quota_exceeded | concurrency_limit_exceeded | request_too_large
    message: str
    retry_after_s: float | None
    headers: dict[str, str]


@dataclass
class Reservation:
    """Tokens reserved for one request; :meth:`settle` once with the real usage."""

    store: QuotaStore
    counters: list[Counter]
    reserved: Reserved | None
    estimate: int
    slot: str | None  # the in-flight slot taken, if the key limits concurrency
    _settled: bool = field(default=False, repr=False)

    def headers(self) -> dict[str, str]:
        if self.reserved is None or not self.counters:
            return {}
        return _token_headers(self.counters, self.reserved)

    async def settle(self, used_tokens: int) -> None:
        """Give back (or take) the difference from the estimate; free the slot. Once."""
        if self._settled:
            return
        self._settled = True
        try:
            if self.reserved is not None and used_tokens != self.estimate:
                await self.store.adjust(
                    self.counters, self.reserved.indexes, used_tokens - self.estimate
                )
        finally:
            if self.slot is not None:
                await self.store.leave(self.slot)


def _token_headers(counters: Sequence[Counter], r: Reserved) -> dict[str, str]:
    # OpenAI's names, for the tightest window (the one with the fewest tokens left).
    def left(n: int) -> int:
        return max(0, counters[n].limit - r.used[n])

    n = min(range(len(counters)), key=left)
    c = counters[n]
    reset = (r.indexes[n] + 1) * c.seconds - r.now
    return {
        "x-ratelimit-limit-tokens": str(c.limit),
        "x-ratelimit-remaining-tokens": str(left(n)),
        "x-ratelimit-reset-tokens": f"{max(0.0, reset):.0f}s",
    }


class Quotas:
    """The admission-time quota check of the request path."""

    def __init__(self, store: QuotaStore | None = None) -> None:
        self.store: QuotaStore = store or MemoryQuotaStore()
        self._settling: set[asyncio.Task[None]] = set()

    async def reserve(
        self,
        counters: list[Counter],
        estimate: int,
        *,
        key_id: str,
        max_concurrent: int | None,
    ) -> Reservation | QuotaRefusal:
        estimate = max(0, estimate)
        for c in counters:
            if estimate > c.limit:
                return QuotaRefusal(
                    "request_too_large",
                    f"This request may use up to {estimate} tokens (its prompt and max_tokens), "
                    f"more than {c.label} allow ({c.limit}): lower max_tokens or shorten it.",
                    None,
                    {},
                )
        slot = f"inflight:{key_id}" if max_concurrent is not None else None
        if slot is not None and max_concurrent is not None:
            if not await self.store.enter(slot, max_concurrent):
                return QuotaRefusal(
                    "concurrency_limit_exceeded",
                    f"This API key already has {max_concurrent} requests in flight, its limit; "
                    "retry when one has finished.",
                    1.0,
                    {"x-ratelimit-limit-concurrent": str(max_concurrent)},
                )
        reserved = None
        if counters:
            reserved = await self.store.reserve(counters, estimate)
            if reserved.failed is not None:
                if slot is not None:
                    await self.store.leave(slot)
                c = counters[reserved.failed]
                retry = (reserved.indexes[reserved.failed] + 1) * c.seconds - reserved.now
                return QuotaRefusal(
                    "token_quota_exceeded",
                    f"{c.label.capitalize()} ({c.limit}) would be exceeded by this request "
                    f"(up to {estimate} tokens); retry after {math.ceil(retry)}s.",
                    max(1.0, retry),
                    _token_headers(counters, reserved),
                )
        return Reservation(self.store, counters, reserved, estimate, slot)

    def settle_soon(self, reservation: Reservation, used_tokens: int) -> None:
        """From synchronous code (the request's settlement): settle on the running loop."""
        task = asyncio.get_running_loop().create_task(self._settle(reservation, used_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, reservation: Reservation, used_tokens: int) -> None:
        try:
            await reservation.settle(used_tokens)
        except Exception:  # a store outage must not fail a request that is over
            log.exception("could not settle a quota reservation")
