"""FairScheduler's fair headroom: extra slots only for a tenant with nothing in flight at the VTC
minimum (under FCFS, plain slots)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.control_plane.services.scheduler import FairScheduler, Policy, Ticket

R = "runner-1"


async def settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def runner(scheduler: FairScheduler) -> dict:
    return dict(scheduler.snapshot()["runners"][R])


async def test_light_tenant_starts_at_once_in_the_headroom_while_the_heavy_one_queues() -> None:
    scheduler = FairScheduler()
    scheduler.set_capacity(R, 2, headroom=1)
    a1 = await scheduler.acquire(R, "A", 10)
    a2 = await scheduler.acquire(R, "A", 10)
    # A already has requests in flight: its third waits, the headroom is not for it.
    a3 = asyncio.create_task(scheduler.acquire(R, "A", 10))
    await settle()
    assert not a3.done() and runner(scheduler)["in_headroom"] == 0
    # B has nothing in flight and (after the lift) the lowest counter: it starts now.
    b1 = await asyncio.wait_for(scheduler.acquire(R, "B", 10), 1)
    assert b1.headroom and not a1.headroom
    snap = runner(scheduler)
    assert (snap["in_flight"], snap["in_headroom"], snap["queued"]) == (3, 1, 1)
    # A second request of B while its first runs is an ordinary waiter.
    b2 = asyncio.create_task(scheduler.acquire(R, "B", 10))
    await settle()
    assert not b2.done()
    # B was lifted to A's counter when it arrived (20) and charged its prompt (30): A (20) is next.
    scheduler.release(a1)
    await settle()
    assert a3.done() and not a3.result().headroom and not b2.done()
    scheduler.release(a2)
    await settle()
    assert b2.done() and not b2.result().headroom
    for t in (b1, b2.result()):
        scheduler.release(t)
    scheduler.release(a3.result())
    assert runner(scheduler)["in_flight"] == 0


async def test_no_headroom_for_a_tenant_above_the_backlogged_minimum() -> None:
    scheduler = FairScheduler()
    scheduler.set_capacity(R, 1, headroom=1)
    a1 = await scheduler.acquire(R, "A", 0)
    a2 = asyncio.create_task(scheduler.acquire(R, "A", 0))  # A backlogged at counter 0
    await settle()
    # B takes the headroom and is served a lot while A waits.
    b = await asyncio.wait_for(scheduler.acquire(R, "B", 0), 1)
    assert b.headroom
    scheduler.charge(b, completion_tokens=500)
    scheduler.release(b)
    await settle()
    assert not a2.done()  # the regular slot is still A1's
    # B has nothing in flight but its counter (1000) is above the backlogged minimum (A's 0).
    b2 = asyncio.create_task(scheduler.acquire(R, "B", 0))
    await settle()
    assert not b2.done() and runner(scheduler)["in_headroom"] == 0
    # C is new: lifted to A's counter, it is at the minimum and has nothing in flight.
    c = await asyncio.wait_for(scheduler.acquire(R, "C", 0), 1)
    assert c.headroom
    for t in (a1, c):
        scheduler.release(t)
    await settle()
    for task in (a2, b2):
        scheduler.release(await task)


async def test_a_freed_headroom_slot_goes_to_the_next_tenant_only_if_it_has_nothing_in_flight() -> (
    None
):
    scheduler = FairScheduler()
    scheduler.set_capacity(R, 1, headroom=1)
    a1 = await scheduler.acquire(R, "A", 0)
    c = await scheduler.acquire(R, "C", 0)  # headroom
    a2 = asyncio.create_task(scheduler.acquire(R, "A", 0))
    d = asyncio.create_task(scheduler.acquire(R, "D", 0))  # headroom busy: waits
    await settle()
    assert c.headroom and not d.done()
    scheduler.charge(a1, completion_tokens=100)  # A is now ahead: D is VTC's next pick
    scheduler.release(c)
    await settle()
    assert d.done() and d.result().headroom and not a2.done()
    scheduler.release(d.result())
    await settle()
    assert not a2.done()  # the next pick is A, which has a request in flight: no headroom for it
    scheduler.release(a1)
    scheduler.release(await a2)


async def test_fcfs_uses_the_headroom_as_plain_slots() -> None:
    # FCFS keeps no slot free for anyone: with the same engine slots as VTC,
    # the benchmark's throughput comparison is like for like.
    scheduler = FairScheduler(policy="fcfs")
    scheduler.set_capacity(R, 1, headroom=2)
    a1 = await scheduler.acquire(R, "A", 0)
    a2 = await scheduler.acquire(R, "A", 0)  # A has one in flight: VTC would not give it headroom
    b = await scheduler.acquire(R, "B", 0)
    a3 = asyncio.create_task(scheduler.acquire(R, "A", 0))
    await settle()
    snap = runner(scheduler)
    assert not a3.done() and (snap["in_flight"], snap["in_headroom"], snap["queued"]) == (3, 0, 1)
    assert not (a1.headroom or a2.headroom or b.headroom)
    scheduler.release(b)
    a3_ticket = await a3
    assert not a3_ticket.headroom
    for ticket in (a1, a2, a3_ticket):
        scheduler.release(ticket)


async def test_set_capacity_keeps_the_headroom_unless_given() -> None:
    scheduler = FairScheduler()
    scheduler.set_capacity(R, 2, headroom=1)
    scheduler.set_capacity(R, 3)
    assert (runner(scheduler)["capacity"], runner(scheduler)["headroom"]) == (3, 1)
    with pytest.raises(ValueError):
        scheduler.set_capacity(R, 1, headroom=-1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    capacity=st.integers(1, 3),
    headroom=st.integers(0, 2),
    steps=st.integers(5, 60),
    policy=st.sampled_from(["vtc", "fcfs"]),
)
def test_never_more_than_capacity_plus_headroom_nor_headroom_for_a_busy_tenant(
    seed: int, capacity: int, headroom: int, steps: int, policy: Policy
) -> None:
    # Under FCFS the headroom slots are plain slots: "regular" means all of them.
    regular = capacity + headroom if policy == "fcfs" else capacity

    async def scenario() -> None:
        rng = random.Random(seed)
        scheduler = FairScheduler(policy=policy)
        scheduler.set_capacity(R, capacity, headroom=headroom)
        held: list[Ticket] = []
        waiting: list[asyncio.Task[Ticket]] = []
        for _ in range(steps):
            if held and rng.random() < 0.45:
                ticket = held.pop(rng.randrange(len(held)))
                scheduler.charge(ticket, completion_tokens=rng.randint(0, 50))
                scheduler.release(ticket)
            else:
                tenant = rng.choice("ABCD")
                busy = tenant in runner(scheduler)["in_flight_by_tenant"]
                waiting.append(
                    asyncio.create_task(scheduler.acquire(R, tenant, rng.randint(0, 20)))
                )
                await settle()
                if waiting[-1].done() and waiting[-1].result().headroom:
                    assert not busy, "a headroom slot went to a tenant with a request in flight"
            await settle()
            for task in [t for t in waiting if t.done()]:
                waiting.remove(task)
                held.append(task.result())
            snap = runner(scheduler)
            assert snap["in_flight"] <= capacity + headroom and snap["in_headroom"] <= headroom
            assert snap["in_flight"] - snap["in_headroom"] <= regular
            assert policy == "vtc" or snap["in_headroom"] == 0
            # Nobody waits while a regular slot is free.
            assert snap["queued"] == 0 or snap["in_flight"] - snap["in_headroom"] == regular
        while held or waiting:
            for ticket in held:
                scheduler.release(ticket)
            held.clear()
            await settle()
            for task in [t for t in waiting if t.done()]:
                waiting.remove(task)
                held.append(task.result())
        assert runner(scheduler)["in_flight"] == 0

    asyncio.run(scenario())
