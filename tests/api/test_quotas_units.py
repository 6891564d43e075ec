"""Quota arithmetic of services/quotas.py on the in-process store, with a clock the test moves
(an injected seam: the store takes its clock as an argument). The same arithmetic through Redis
and two replicas: tests/api/test_quotas.py."""

from __future__ import annotations

import asyncio

import pytest

from outpost.control_plane.services.quotas import (
    MemoryQuotaStore,
    QuotaRefusal,
    Quotas,
    Reservation,
    counters_for,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _quotas(start: float = 1_000_000 * 86_400 + 10) -> tuple[Quotas, Clock]:
    clock = Clock(start)
    return Quotas(MemoryQuotaStore(clock)), clock


def _counters(**limits: int | None) -> list:
    return counters_for(
        "t1",
        "k1",
        key_per_minute=limits.get("key_per_minute"),
        key_per_day=limits.get("key_per_day"),
        tenant_per_minute=limits.get("tenant_per_minute"),
        tenant_per_day=limits.get("tenant_per_day"),
    )


async def test_a_reservation_is_settled_with_the_real_usage() -> None:
    quotas, _ = _quotas()
    counters = _counters(key_per_minute=100)
    first = await quotas.reserve(counters, 60, key_id="k1", max_concurrent=None)
    assert isinstance(first, Reservation)
    assert first.headers()["x-ratelimit-remaining-tokens"] == "40"
    # 60 reserved, 40 left: a second 60 does not fit until the first settles at its real 10.
    refused = await quotas.reserve(counters, 60, key_id="k1", max_concurrent=None)
    assert isinstance(refused, QuotaRefusal) and refused.code == "token_quota_exceeded"
    await first.settle(10)
    second = await quotas.reserve(counters, 60, key_id="k1", max_concurrent=None)
    assert isinstance(second, Reservation)
    assert second.headers()["x-ratelimit-remaining-tokens"] == "30"
    await second.settle(10)
    await second.settle(0)  # once: a second settlement changes nothing
    third = await quotas.reserve(counters, 80, key_id="k1", max_concurrent=None)
    assert isinstance(third, Reservation)  # 10 + 10 used, 80 fits exactly
    assert third.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_retry_after_is_the_end_of_the_refusing_window() -> None:
    quotas, clock = _quotas()
    counters = _counters(key_per_minute=50, tenant_per_day=1_000)
    assert isinstance(
        await quotas.reserve(counters, 50, key_id="k1", max_concurrent=None), Reservation
    )
    refused = await quotas.reserve(counters, 1, key_id="k1", max_concurrent=None)
    assert isinstance(refused, QuotaRefusal)
    assert refused.retry_after_s == pytest.approx(50.0)  # the clock is 10 s into its minute
    assert "per minute" in refused.message
    clock.now += 50  # the next minute: the key's window is new, the tenant's day is not
    allowed = await quotas.reserve(counters, 50, key_id="k1", max_concurrent=None)
    assert isinstance(allowed, Reservation)
    headers = allowed.headers()
    assert headers["x-ratelimit-limit-tokens"] == "50"  # the tighter of the two windows
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert headers["x-ratelimit-reset-tokens"] == "60s"


async def test_the_tenant_window_binds_every_key_of_the_tenant() -> None:
    quotas, _ = _quotas()
    one = counters_for(
        "t1",
        "k1",
        key_per_minute=None,
        key_per_day=None,
        tenant_per_minute=None,
        tenant_per_day=100,
    )
    two = counters_for(
        "t1",
        "k2",
        key_per_minute=None,
        key_per_day=None,
        tenant_per_minute=None,
        tenant_per_day=100,
    )
    assert isinstance(await quotas.reserve(one, 70, key_id="k1", max_concurrent=None), Reservation)
    refused = await quotas.reserve(two, 40, key_id="k2", max_concurrent=None)
    assert isinstance(refused, QuotaRefusal) and "tenant" in refused.message


async def test_a_request_larger_than_the_limit_is_refused_without_retry_after() -> None:
    quotas, _ = _quotas()
    refused = await quotas.reserve(
        _counters(key_per_day=100), 101, key_id="k1", max_concurrent=None
    )
    assert isinstance(refused, QuotaRefusal)
    assert refused.code == "request_too_large" and refused.retry_after_s is None


async def test_requests_in_flight_are_counted_and_given_back() -> None:
    quotas, _ = _quotas()
    first = await quotas.reserve([], 5, key_id="k1", max_concurrent=1)
    assert isinstance(first, Reservation)
    second = await quotas.reserve([], 5, key_id="k1", max_concurrent=1)
    assert isinstance(second, QuotaRefusal) and second.code == "concurrency_limit_exceeded"
    other_key = await quotas.reserve([], 5, key_id="k2", max_concurrent=1)
    assert isinstance(other_key, Reservation)
    await first.settle(5)
    assert isinstance(await quotas.reserve([], 5, key_id="k1", max_concurrent=1), Reservation)


async def test_a_refused_token_reservation_frees_its_slot() -> None:
    quotas, _ = _quotas()
    counters = _counters(key_per_minute=10)
    refused = await quotas.reserve(counters, 11, key_id="k1", max_concurrent=1)
    assert isinstance(refused, QuotaRefusal)
    assert isinstance(
        await quotas.reserve(counters, 10, key_id="k1", max_concurrent=1), Reservation
    )
    refused = await quotas.reserve(counters, 1, key_id="k1", max_concurrent=2)
    assert isinstance(refused, QuotaRefusal) and refused.code == "token_quota_exceeded"
    # The refusal gave its slot back: one is taken (the reservation above), one is free.
    assert isinstance(await quotas.reserve([], 0, key_id="k1", max_concurrent=2), Reservation)


async def test_settle_soon_runs_on_the_loop() -> None:
    quotas, _ = _quotas()
    counters = _counters(key_per_minute=100)
    held = await quotas.reserve(counters, 100, key_id="k1", max_concurrent=None)
    assert isinstance(held, Reservation)
    quotas.settle_soon(held, 0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert isinstance(
        await quotas.reserve(counters, 100, key_id="k1", max_concurrent=None), Reservation
    )
