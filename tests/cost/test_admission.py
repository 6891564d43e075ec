"""Admission in process: engine-time pricing, slots freed on every path, the HTTP
errors of a full queue, and the hub keeping the scheduler's capacities."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from outpost.control_plane.errors import ApiError
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.routing.service_fairness import ServiceFairness
from outpost.control_plane.services.budgets import BudgetGuard
from outpost.control_plane.services.cost import DEFAULT_USD_PER_HOUR, EngineTimeMeter, hourly_rate
from outpost.control_plane.services.scheduler import FairScheduler, RunnerGone
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import RunnerLoad
from outpost.sdk.protocol import Usage


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    request_id: str
    tenant_id: str
    api_key_id: str | None = None


def runner(capacity: int = 2, cost: dict | None = None) -> ConnectedRunner:
    return ConnectedRunner(
        runner_id="run_1",
        tenant_id="ten_x",
        name="r1",
        models=[],
        capacity=capacity,
        cost={"usd_per_hour": 3.6} if cost is None else cost,
    )


def admission(clock: Clock, **kw: object) -> Admission:
    wall = datetime(2026, 3, 1, tzinfo=UTC)
    return Admission(
        scheduler=FairScheduler(clock=clock, **kw),
        meter=EngineTimeMeter(clock),  # type: ignore[arg-type]
        fairness=ServiceFairness(backlog_wait_s=0.001, clock=clock),
        budgets=BudgetGuard(clock=lambda: wall, monotonic=clock),
        queue_timeout_s=30,
    )


async def test_overlapping_requests_are_priced_by_their_share_of_engine_time() -> None:
    clock = Clock()
    adm, r = admission(clock), runner(capacity=2)
    adm.runner_changed(r, True)
    a = await adm.acquire(Call("req_a", "t1"), r, prompt_tokens=10)  # t=0
    clock.now = 2
    b = await adm.acquire(Call("req_b", "t2"), r, prompt_tokens=10)  # t=2: [2, 6) shared
    clock.now = 6
    a.finish(Usage(prompt_tokens=12, completion_tokens=5), ttft_ms=100)
    clock.now = 8
    b.finish(Usage(prompt_tokens=12, completion_tokens=5), ttft_ms=100)
    # docs/cost.md's worked example: $0.001/s, 4 share-seconds each.
    assert a.record_fields()["engine_share_s"] == pytest.approx(4.0)
    assert a.record_fields()["cost_usd"] == pytest.approx(0.004)
    assert b.record_fields()["cost_usd"] == pytest.approx(0.004)
    assert a.record_fields()["queue_ms"] == 0
    assert adm.scheduler.counter("run_1", "t1") == pytest.approx(12 + 2 * 5)
    a.finish(None)  # idempotent: nothing changes
    assert a.record_fields()["cost_usd"] == pytest.approx(0.004)
    snap = adm.service_snapshot("t1")
    assert snap["tenants"]["t1"]["service_weighted_tokens"] == 22 and "other-1" in snap["tenants"]


async def test_a_queued_request_records_its_wait_and_every_exit_frees_the_slot() -> None:
    clock = Clock()
    adm, r = admission(clock), runner(capacity=1)
    adm.runner_changed(r, True)
    first = await adm.acquire(Call("req_1", "t1"), r, prompt_tokens=1)
    waiter = asyncio.create_task(adm.acquire(Call("req_2", "t2"), r, prompt_tokens=1))
    await asyncio.sleep(0)
    assert r.queued == 1
    clock.now = 1.5
    first.abandon()  # failover: freed, not billed
    assert first.record_fields()["cost_usd"] == 0
    second = await waiter
    assert r.queued == 0 and second.record_fields()["queue_ms"] == pytest.approx(1500)
    second.finish(None)  # client disconnect: no usage, still freed and billed for engine time
    assert adm.scheduler.snapshot()["runners"]["run_1"]["in_flight"] == 0


async def test_full_queue_and_lost_runner() -> None:
    clock = Clock()
    adm, r = admission(clock, max_queue_per_runner=1), runner(capacity=1)
    adm.runner_changed(r, True)
    await adm.acquire(Call("req_1", "t1"), r, prompt_tokens=1)
    queued = asyncio.create_task(adm.acquire(Call("req_2", "t1"), r, prompt_tokens=1))
    await asyncio.sleep(0)
    with pytest.raises(ApiError) as info:
        await adm.acquire(Call("req_3", "t2"), r, prompt_tokens=1)
    assert (info.value.status, info.value.code, info.value.type) == (
        429,
        "queue_full",
        "queue_full",
    )
    assert info.value.headers["Retry-After"] == "1"
    assert adm.service_snapshot("t2")["tenants"]["t2"]["rejections"] == 1
    adm.runner_changed(r, False)  # the runner's last link is gone
    with pytest.raises(RunnerGone):
        await queued
    assert r.queued == 0


async def test_queue_timeout_is_503() -> None:
    clock = Clock()
    adm, r = admission(clock), runner(capacity=1)
    adm.queue_timeout_s = 0.01
    adm.runner_changed(r, True)
    await adm.acquire(Call("req_1", "t1"), r, prompt_tokens=1)
    with pytest.raises(ApiError) as info:
        await adm.acquire(Call("req_2", "t2"), r, prompt_tokens=1)
    assert (info.value.status, info.value.code) == (503, "queue_timeout")


def test_hub_listener_keeps_capacity_in_step() -> None:
    hub, adm = TunnelHub(), Admission()
    hub.listeners.append(adm.runner_changed)

    class FakeLink:
        runner_id = "run_1"
        closed = draining = False
        open_streams = 0

        def __init__(self) -> None:
            self.load = RunnerLoad()

    link = FakeLink()
    hub.attach(link, runner(capacity=3))  # type: ignore[arg-type]
    assert adm.scheduler.snapshot()["runners"]["run_1"]["capacity"] == 3
    hub.attach(FakeLink(), runner(capacity=5))  # type: ignore[arg-type]  # a later hello refreshes it
    assert adm.scheduler.snapshot()["runners"]["run_1"]["capacity"] == 5
    for ln in hub.runners[
        "run_1"
    ].links:  # status frames bring the fair headroom, read at each admission
        ln.load = RunnerLoad(headroom=1)
    adm.runner_changed(hub.runners["run_1"], True)
    assert adm.scheduler.snapshot()["runners"]["run_1"]["headroom"] == 1
    hub.detach(link)  # type: ignore[arg-type]
    assert "run_1" in adm.scheduler.snapshot()["runners"]  # one link left
    hub.detach(hub.runners["run_1"].links[0])
    assert adm.scheduler.snapshot()["runners"] == {}


@pytest.mark.parametrize(
    ("cost", "usd_per_hour"),
    [
        ({"usd_per_hour": 2.5}, 2.5),
        ({"kind": "power", "watts": 500, "usd_per_kwh": 0.2, "pue": 1.5}, 0.15),
        ({"hardware_class": "nvidia-h100", "count": 8}, 8 * DEFAULT_USD_PER_HOUR["nvidia-h100"]),
        ({}, DEFAULT_USD_PER_HOUR["cpu-small"]),
        ({"usd_per_hour": "lots", "hardware_class": "nope"}, DEFAULT_USD_PER_HOUR["cpu-small"]),
        ({"usd_per_hour": -1, "watts": 100, "usd_per_kwh": 1.0}, 0.1),
    ],
)
def test_runner_rate_from_its_hello(cost: dict, usd_per_hour: float) -> None:
    assert hourly_rate(cost) == pytest.approx(usd_per_hour)
    assert runner(cost=cost).usd_per_second == pytest.approx(usd_per_hour / 3600)


async def test_a_runner_no_listener_announced_gets_its_own_capacity() -> None:
    # A runner held by another replica reaches admission without a hub event.
    clock = Clock()
    adm, r = admission(clock), runner(capacity=3)
    slots = [await adm.acquire(Call(f"req_{i}", "t1"), r, prompt_tokens=1) for i in range(3)]
    assert adm.scheduler.snapshot()["runners"]["run_1"]["in_flight"] == 3
    for slot in slots:
        slot.finish(None)
