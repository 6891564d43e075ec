"""The scrape-time collector, read against a real scheduler and hub (no process, no runner)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from outpost.control_plane.observability import StateCollector
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.services.scheduler import Abandoned, FairScheduler, QueueTimeout
from outpost.control_plane.tunnel.hub import TunnelHub
from tests.observability.conftest import samples, value

R = "run_collector"


@dataclass
class _State:
    """The two parts of AppState the collector reads."""

    hub: TunnelHub = field(default_factory=TunnelHub)
    admission: Admission = field(default_factory=Admission)


def _scrape(state: _State) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(StateCollector(state))  # type: ignore[arg-type]
    return samples(generate_latest(registry).decode())


async def test_requests_that_leave_the_queue_unserved_are_counted_per_runner() -> None:
    state = _State(admission=Admission(scheduler=FairScheduler(default_capacity=1)))
    scheduler = state.admission.scheduler
    held = await scheduler.acquire(R, "A", 1)
    assert ("outpost_scheduler_abandoned_total", frozenset({("runner", R)})) in _scrape(
        state
    )  # 0, present
    assert value(_scrape(state), "outpost_scheduler_abandoned_total", runner=R) == 0

    gone = asyncio.Event()
    waiter = asyncio.create_task(scheduler.acquire(R, "B", 1, gone=gone.wait))
    await asyncio.sleep(0)
    assert value(_scrape(state), "outpost_scheduler_queue_depth", runner=R, tenant="B") == 1
    gone.set()  # the client left while queued
    with pytest.raises(Abandoned):
        await waiter
    with pytest.raises(QueueTimeout):  # a queue timeout leaves unserved too
        await scheduler.acquire(R, "C", 1, timeout=0.01)

    scraped = _scrape(state)
    assert value(scraped, "outpost_scheduler_abandoned_total", runner=R) == 2
    assert value(scraped, "outpost_scheduler_queue_depth", runner=R, tenant="B") == 0
    scheduler.release(held)
