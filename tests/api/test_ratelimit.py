"""The in-process token bucket behind per-key rate limits."""

from __future__ import annotations

import asyncio

import pytest

from outpost.control_plane.services.ratelimit import RateLimiter, TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_of_one_minute_then_refusal_with_retry_after() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(clock)
    decisions = [limiter.take("key", 3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert refused.retry_after_s == pytest.approx(20.0) and refused.retry_after_header == "20"


def test_bucket_refills_continuously() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(clock)
    for _ in range(60):
        assert limiter.take("key", 60).allowed
    assert not limiter.take("key", 60).allowed
    clock.now += 1.0  # 60 rpm = one request per second
    assert limiter.take("key", 60).allowed
    assert not limiter.take("key", 60).allowed
    clock.now += 3600
    assert limiter.take("key", 60).remaining == 59, (
        "an idle key refills to one minute's burst, no more"
    )


def test_keys_are_independent_and_the_table_is_bounded() -> None:
    limiter = TokenBucketLimiter(Clock(), max_keys=2)
    assert limiter.take("a", 1).allowed and not limiter.take("a", 1).allowed
    assert limiter.take("b", 1).allowed
    limiter.take("c", 1)
    assert len(limiter._buckets) == 2


def test_retry_after_header_rounds_up() -> None:
    limiter = TokenBucketLimiter(Clock())
    limiter.take("k", 7)
    for _ in range(6):
        limiter.take("k", 7)
    refused = limiter.take("k", 7)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(60 / 7)
    assert refused.retry_after_header == "9"


def test_protocol_is_async_so_a_shared_store_can_replace_it() -> None:
    limiter: RateLimiter = TokenBucketLimiter(Clock())
    decision = asyncio.run(limiter.acquire("k", 10))
    assert decision.allowed and decision.limit == 10
