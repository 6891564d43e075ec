"""FairScheduler: VTC dispatch order, lift, weights, admission, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.control_plane.services.scheduler import (
    FairScheduler,
    Policy,
    QueueFull,
    QueueTimeout,
    RunnerGone,
    Ticket,
)

R = "runner-1"


async def settle(turns: int = 10) -> None:
    """Let every ready task run until the loop is quiet."""
    for _ in range(turns):
        await asyncio.sleep(0)


Arrival = tuple[str, str, int, float]  # (label, tenant, prompt tokens, weight)


async def dispatch_order(
    scheduler: FairScheduler,
    arrivals: Sequence[Arrival],
    completion_tokens: int = 0,
    completion_by_tenant: Mapping[str, int] | None = None,
) -> list[str]:
    """Queue ``arrivals`` behind a blocker on a capacity-1 runner, then serve
    them one at a time, each producing ``completion_tokens`` (or its tenant's
    entry in ``completion_by_tenant``); return the dispatch order."""
    outputs = completion_by_tenant or {}
    scheduler.set_capacity(R, 1)
    blocker = await scheduler.acquire(R, "blocker", 0)
    order: list[str] = []
    admitted: dict[str, Ticket] = {}

    async def request(label: str, tenant: str, tokens: int, weight: float) -> None:
        admitted[label] = await scheduler.acquire(R, tenant, tokens, weight=weight)
        order.append(label)

    tasks = [asyncio.create_task(request(*arrival)) for arrival in arrivals]
    await settle()
    current = blocker
    for _ in arrivals:
        produced = outputs.get(current.tenant_id, completion_tokens)
        scheduler.charge(current, completion_tokens=produced)
        scheduler.release(current)
        await settle()
        current = admitted[order[-1]]
    scheduler.release(current)
    await asyncio.gather(*tasks)
    return order


def burst(tenant: str, count: int, tokens: int = 100, weight: float = 1.0) -> list[Arrival]:
    return [(f"{tenant}{i}", tenant, tokens, weight) for i in range(1, count + 1)]


async def test_vtc_interleaves_backlogged_tenants() -> None:
    arrivals = burst("A", 4) + burst("B", 2)
    order = await dispatch_order(FairScheduler(), arrivals, completion_tokens=10)
    # Both start at 0; ties go to the earlier arrival, then the counters alternate.
    assert order == ["A1", "B1", "A2", "B2", "A3", "A4"]


async def test_fcfs_serves_in_arrival_order() -> None:
    arrivals = burst("A", 4) + burst("B", 2)
    order = await dispatch_order(FairScheduler(policy="fcfs"), arrivals, completion_tokens=10)
    assert order == ["A1", "A2", "A3", "A4", "B1", "B2"]


async def test_vtc_charges_output_twice_input() -> None:
    # A: short prompts, long outputs (10 + 2 x 45 = 100 per request); B: long
    # prompts, no output (100). Equal weighted service, so they alternate; were
    # output counted once, A (55) would get two turns for each of B's.
    scheduler = FairScheduler()
    arrivals = burst("A", 3, tokens=10) + burst("B", 3, tokens=100)
    order = await dispatch_order(scheduler, arrivals, completion_by_tenant={"A": 45, "B": 0})
    assert order == ["A1", "B1", "A2", "B2", "A3", "B3"]
    assert scheduler.counter(R, "A") == scheduler.counter(R, "B") == 300


async def test_weights_give_proportional_service() -> None:
    arrivals = burst("A", 6, weight=2.0) + burst("B", 6, weight=1.0)
    order = await dispatch_order(FairScheduler(), arrivals)
    assert order == [
        "A1", "B1", "A2", "A3", "B2", "A4", "A5", "B3", "A6", "B4", "B5", "B6",
    ]  # fmt: skip
    # While both were backlogged (first 9), A got twice B's share.
    first = order[:9]
    assert sum(x.startswith("A") for x in first) == 2 * sum(x.startswith("B") for x in first)


async def test_fcfs_and_vtc_differ_on_ten_to_one_load() -> None:
    # A sends ten requests for each of B's; all are queued before serving starts.
    arrivals: list[Arrival] = []
    for round_ in range(5):
        arrivals += [(f"A{round_}.{i}", "A", 100, 1.0) for i in range(10)]
        arrivals.append((f"B{round_}", "B", 100, 1.0))

    def positions_of_b(order: list[str]) -> list[int]:
        return [i + 1 for i, label in enumerate(order) if label.startswith("B")]

    fcfs = await dispatch_order(FairScheduler(policy="fcfs"), arrivals, completion_tokens=10)
    vtc = await dispatch_order(FairScheduler(policy="vtc"), arrivals, completion_tokens=10)
    assert positions_of_b(fcfs) == [11, 22, 33, 44, 55]
    assert positions_of_b(vtc) == [2, 4, 6, 8, 10]


async def test_returning_tenant_is_lifted_to_min_backlogged_counter() -> None:
    scheduler = FairScheduler()
    blocker = await scheduler.acquire(R, "X", 0)
    tasks = {
        label: asyncio.create_task(scheduler.acquire(R, tenant, 100))
        for label, tenant in [("A1", "A"), ("A2", "A"), ("B1", "B"), ("B2", "B")]
    }
    await settle()
    scheduler.release(blocker)  # A1 runs: A=100
    await settle()
    scheduler.release(tasks["A1"].result())  # B1 runs: B=100
    await settle()
    scheduler.release(tasks["B1"].result())  # A2 runs: A=200; only B2 waits
    await settle()
    assert scheduler.counter(R, "A") == 200
    assert scheduler.counter(R, "B") == 100

    newcomer = asyncio.create_task(scheduler.acquire(R, "C", 100))
    returning = asyncio.create_task(scheduler.acquire(R, "A", 100))
    await settle()
    assert scheduler.counter(R, "C") == 100  # lifted from 0 to min backlogged (B)
    assert scheduler.counter(R, "A") == 200  # its own counter is higher: kept
    # B2 (100, earlier) then C (100), then A (200).
    order: list[str] = []
    for task in (tasks["A2"], tasks["B2"], newcomer, returning):
        ticket = task.result()
        order.append(ticket.tenant_id)
        scheduler.release(ticket)
        await settle()
    assert order == ["A", "B", "C", "A"]


async def test_lift_with_empty_queue_uses_last_dispatched_tenant() -> None:
    scheduler = FairScheduler()
    for _ in range(5):
        scheduler.release(await scheduler.acquire(R, "heavy", 100))
    assert scheduler.counter(R, "heavy") == 500
    # A newcomer while nobody waits starts level with the last tenant served,
    # not at 0: otherwise it would starve "heavy" for 500 tokens later on.
    ticket = await scheduler.acquire(R, "light", 10)
    assert scheduler.counter(R, "light") == 510
    scheduler.release(ticket)


async def test_charge_is_cumulative_and_corrects_the_estimate() -> None:
    scheduler = FairScheduler()
    ticket = await scheduler.acquire(R, "A", 100, weight=2.0)
    assert scheduler.counter(R, "A") == 50
    scheduler.charge(ticket, prompt_tokens=80)  # real prompt was shorter
    assert scheduler.counter(R, "A") == 40
    for produced in (1, 2, 3, 3):  # streaming: running totals, a repeat is a no-op
        scheduler.charge(ticket, completion_tokens=produced)
    assert scheduler.counter(R, "A") == 40 + 3
    scheduler.release(ticket)
    scheduler.charge(ticket, prompt_tokens=80, completion_tokens=10)  # final usage after release
    assert scheduler.counter(R, "A") == 40 + 10


async def test_admission_respects_live_capacity_changes() -> None:
    scheduler = FairScheduler()
    scheduler.set_capacity(R, 2)
    tasks = [asyncio.create_task(scheduler.acquire(R, f"t{i % 2}", 10)) for i in range(6)]
    await settle()

    def in_flight() -> int:
        return scheduler.snapshot()["runners"][R]["in_flight"]

    assert in_flight() == 2
    assert sum(t.done() for t in tasks) == 2
    scheduler.set_capacity(R, 4)
    await settle()
    assert in_flight() == 4
    scheduler.set_capacity(R, 1)  # lowering never evicts running requests
    held = [t.result() for t in tasks if t.done()]
    scheduler.release(held[0])
    await settle()
    assert in_flight() == 3
    assert sum(t.done() for t in tasks) == 4
    for ticket in held[1:]:
        scheduler.release(ticket)
    await settle()
    assert in_flight() == 1  # one waiter admitted once below capacity
    scheduler.set_capacity(R, 0)
    for task in tasks:
        if task.done():
            scheduler.release(task.result())
    await settle()
    assert in_flight() == 0
    assert scheduler.snapshot()["runners"][R]["queued"] == 1
    scheduler.forget_runner(R)
    with pytest.raises(RunnerGone):
        await asyncio.gather(*tasks)


async def test_queue_full_at_runner_and_tenant_bounds() -> None:
    scheduler = FairScheduler(max_queue_per_runner=3, max_queue_per_tenant=2)
    held = await scheduler.acquire(R, "A", 1)
    waiting = [asyncio.create_task(scheduler.acquire(R, "A", 1)) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull) as tenant_full:
        await scheduler.acquire(R, "A", 1)
    assert tenant_full.value.scope == "tenant"
    waiting.append(asyncio.create_task(scheduler.acquire(R, "B", 1)))
    await settle()
    with pytest.raises(QueueFull) as runner_full:
        await scheduler.acquire(R, "C", 1)
    assert runner_full.value.scope == "runner"
    assert runner_full.value.tenant_id == "C"
    snapshot = scheduler.snapshot()["runners"][R]
    assert snapshot["queued_by_tenant"] == {"A": 2, "B": 1}
    for task in waiting:
        task.cancel()
    await settle()
    scheduler.release(held)


async def test_free_slot_admits_even_with_zero_queue() -> None:
    scheduler = FairScheduler(max_queue_per_runner=0, default_capacity=1)
    ticket = await scheduler.acquire(R, "A", 1)
    with pytest.raises(QueueFull):
        await scheduler.acquire(R, "A", 1)
    scheduler.release(ticket)
    scheduler.release(ticket)  # idempotent
    scheduler.release(await scheduler.acquire(R, "A", 1))


async def test_timeout_leaves_the_queue() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)
    with pytest.raises(QueueTimeout):
        await scheduler.acquire(R, "B", 1, timeout=0.01)
    assert scheduler.snapshot()["runners"][R]["queued"] == 0
    scheduler.release(held)
    assert scheduler.snapshot()["runners"][R]["in_flight"] == 0


async def test_cancelled_waiter_leaves_cleanly() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)
    task = asyncio.create_task(scheduler.acquire(R, "B", 1))
    await settle()
    task.cancel()
    await settle()
    assert task.cancelled()
    assert scheduler.snapshot()["runners"][R]["queued"] == 0
    scheduler.release(held)
    assert scheduler.snapshot()["runners"][R]["in_flight"] == 0


async def test_slot_granted_to_a_cancelled_waiter_is_handed_on() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)
    first = asyncio.create_task(scheduler.acquire(R, "B", 1))
    second = asyncio.create_task(scheduler.acquire(R, "C", 1))
    await settle()
    scheduler.release(held)  # grants `first` synchronously ...
    first.cancel()  # ... which is cancelled before it can resume
    await settle()
    assert first.cancelled()
    ticket = second.result()  # the slot went on to `second`
    assert scheduler.snapshot()["runners"][R]["in_flight"] == 1
    scheduler.release(ticket)


async def test_forget_runner_fails_waiters_and_isolates_old_tickets() -> None:
    scheduler = FairScheduler()
    held = await scheduler.acquire(R, "A", 1)
    waiter = asyncio.create_task(scheduler.acquire(R, "B", 1))
    await settle()
    scheduler.forget_runner(R)
    with pytest.raises(RunnerGone) as gone:
        await waiter
    assert gone.value.runner_id == R
    assert gone.value.tenant_id == "B"
    fresh = await scheduler.acquire(R, "C", 1)  # the reconnected runner starts empty
    scheduler.release(held)  # an old ticket does not free the new runner's slot
    assert scheduler.snapshot()["runners"][R]["in_flight"] == 1
    scheduler.release(fresh)


async def test_snapshot_reports_queues_and_counters() -> None:
    clock = iter(float(i) for i in range(100))
    scheduler = FairScheduler(clock=lambda: next(clock))
    held = await scheduler.acquire(R, "A", 10)
    task = asyncio.create_task(scheduler.acquire(R, "B", 5))
    await settle()
    assert scheduler.snapshot() == {
        "policy": "vtc",
        "runners": {
            R: {
                "capacity": 1,
                "headroom": 0,
                "in_flight": 1,
                "in_headroom": 0,
                "queued": 1,
                "abandoned": 0,
                "in_flight_by_tenant": {"A": 1},
                "queued_by_tenant": {"B": 1},
                "counters": {"A": 10.0, "B": 10.0},
            }
        },
    }
    scheduler.release(held)
    ticket = await task
    assert ticket.queue_wait_s > 0
    scheduler.release(ticket)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="policy"):
        FairScheduler(policy="lifo")  # type: ignore[arg-type]
    scheduler = FairScheduler()
    with pytest.raises(ValueError, match="capacity"):
        scheduler.set_capacity(R, -1)


# -- property: whatever callers do, no slot leaks and capacity holds ----------

Op = tuple[str, int]

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 2)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("release"), st.integers(0, 20)),
        st.tuples(st.just("capacity"), st.integers(0, 3)),
        st.tuples(st.just("settle"), st.just(0)),
    ),
    max_size=60,
)


async def _exercise(ops: list[Op], policy: Policy) -> None:
    scheduler = FairScheduler(policy=policy, max_queue_per_runner=5, max_queue_per_tenant=3)
    scheduler.set_capacity(R, 1)
    capacity = 1
    pending: list[asyncio.Task[Ticket]] = []
    held: list[Ticket] = []

    def harvest() -> None:
        for task in [t for t in pending if t.done()]:
            pending.remove(task)
            if not task.cancelled() and task.exception() is None:
                held.append(task.result())

    def in_flight() -> int:
        runner = scheduler.snapshot()["runners"][R]
        assert runner["queued"] == 0 or runner["in_flight"] >= capacity  # work-conserving
        return runner["in_flight"]

    async def acquire(tenant: int) -> Ticket:
        return await scheduler.acquire(R, f"t{tenant}", 10)

    before = in_flight()
    for op, arg in ops:
        harvest()
        if op == "acquire":
            pending.append(asyncio.create_task(acquire(arg)))
        elif op == "cancel" and pending:
            pending[arg % len(pending)].cancel()
        elif op == "release" and held:
            scheduler.release(held.pop(arg % len(held)))
        elif op == "capacity":
            capacity = arg
            scheduler.set_capacity(R, arg)
        elif op == "settle":
            await settle()
            harvest()
            assert in_flight() == len(held)  # every admitted slot is owned by someone
        after = in_flight()
        # Admission only ever happens below capacity; a lowered capacity drains.
        assert after <= max(capacity, before)
        before = after
    for task in pending:
        task.cancel()
    await settle()
    harvest()
    assert in_flight() == len(held)
    for ticket in held:
        scheduler.release(ticket)
    runner = scheduler.snapshot()["runners"][R]
    assert (runner["in_flight"], runner["queued"]) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy, policy=st.sampled_from(["vtc", "fcfs"]))
def test_random_acquire_cancel_release_never_leaks(ops: list[Op], policy: Policy) -> None:
    # A private loop per example: no global event loop is set or cleared.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_exercise(ops, policy))
    finally:
        loop.close()
