"""A request whose client goes away while it waits leaves the queue unserved and uncharged."""

from __future__ import annotations

import asyncio

import pytest

from outpost.control_plane.services.scheduler import Abandoned, FairScheduler
from tests.services.test_scheduler import R, settle


class Gone:
    """A client-disconnect signal the test fires by hand (what openai/disconnect.py gives in
    production)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.watched = 0

    async def __call__(self) -> None:
        self.watched += 1
        await self.event.wait()


async def test_gone_while_queued_leaves_and_is_never_dispatched() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 10)
    gone = Gone()
    waiter = asyncio.create_task(scheduler.acquire(R, "B", 5, gone=gone))
    await settle()
    assert scheduler.snapshot()["runners"][R]["queued_by_tenant"] == {"B": 1}
    assert (
        scheduler.counter(R, "B") == 10.0
    )  # lifted to the last dispatched tenant's counter while queued
    gone.event.set()
    with pytest.raises(Abandoned) as left:
        await waiter
    assert (left.value.runner_id, left.value.tenant_id) == (R, "B")
    snap = scheduler.snapshot()["runners"][R]
    assert (snap["queued"], snap["abandoned"], snap["in_flight"]) == (0, 1, 1)
    assert "B" not in snap["counters"]  # as if it had never arrived: the lift is taken back
    scheduler.release(held)
    assert (
        scheduler.snapshot()["runners"][R]["in_flight"] == 0
    )  # nobody was dispatched in its place


async def test_gone_is_only_watched_when_the_request_waits() -> None:
    scheduler = FairScheduler()
    gone = Gone()
    ticket = await scheduler.acquire(R, "A", 1, gone=gone)
    assert gone.watched == 0
    scheduler.release(ticket)


async def test_granted_slot_stops_the_watch() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)
    gone = Gone()
    waiter = asyncio.create_task(scheduler.acquire(R, "B", 1, gone=gone))
    await settle()
    scheduler.release(held)
    ticket = await waiter
    await settle()
    assert gone.watched == 1 and not gone.event.is_set()
    assert not [
        t for t in asyncio.all_tasks() if "Gone.__call__" in repr(t.get_coro())
    ]  # watcher cancelled
    scheduler.release(ticket)


async def test_gone_in_the_same_turn_as_the_grant_refunds_and_hands_on() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 10)
    gone = Gone()
    first = asyncio.create_task(scheduler.acquire(R, "B", 7, gone=gone))
    second = asyncio.create_task(scheduler.acquire(R, "C", 1))
    await settle()
    before_b = scheduler.counter(R, "B")
    scheduler.release(held)  # grants `first` synchronously (charging its estimate) ...
    gone.event.set()  # ... and its client is gone in the same turn: gone wins
    with pytest.raises(Abandoned):
        await first
    await settle()
    assert scheduler.counter(R, "B") == before_b  # the estimate charged at dispatch is refunded
    ticket = second.result()  # the slot went on to `second`
    assert scheduler.snapshot()["runners"][R]["in_flight_by_tenant"] == {"C": 1}
    scheduler.release(ticket)


async def test_lift_is_kept_when_the_backlog_was_served() -> None:
    """Only a backlog that ends with nothing served is undone; charges meanwhile stay."""
    scheduler = FairScheduler(default_capacity=2)
    a = await scheduler.acquire(R, "A", 100)
    b_running = await scheduler.acquire(R, "B", 1)
    gone = Gone()
    queued = asyncio.create_task(scheduler.acquire(R, "B", 1, gone=gone))
    await settle()
    lifted = scheduler.counter(R, "B")
    scheduler.charge(
        b_running, completion_tokens=3
    )  # B's running request produces output meanwhile
    gone.event.set()
    with pytest.raises(Abandoned):
        await queued
    # Only the lift is subtracted (none here: B was the last dispatched), so the running request's
    # output charge (3 tokens x 2) stays.
    assert scheduler.counter(R, "B") == lifted + 6
    scheduler.release(a)
    scheduler.release(b_running)


async def test_returning_tenant_that_leaves_at_once_keeps_its_old_counter() -> None:
    scheduler = FairScheduler()
    b = await scheduler.acquire(R, "B", 3)
    scheduler.release(b)
    held = await scheduler.acquire(R, "A", 500)  # A runs; B is idle with 3
    gone = Gone()
    waiter = asyncio.create_task(scheduler.acquire(R, "B", 1, gone=gone))
    await settle()
    assert (
        scheduler.counter(R, "B") == 503.0
    )  # lifted on return to A's counter (A started from B's 3)
    gone.event.set()
    with pytest.raises(Abandoned):
        await waiter
    assert scheduler.counter(R, "B") == 3.0
    scheduler.release(held)


async def test_a_failing_watch_counts_as_gone() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)

    async def broken() -> None:
        raise ConnectionResetError

    with pytest.raises(Abandoned):
        await scheduler.acquire(R, "B", 1, gone=broken)
    assert scheduler.snapshot()["runners"][R]["queued"] == 0
    scheduler.release(held)
