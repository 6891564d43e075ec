"""The holder's fair queue for relayed requests, in one event loop (two Cluster nodes, real Redis).

The multi-process tests (test_holder_admission.py) show one slot and VTC order
across replicas with a real engine; these check what they cannot time
precisely: a refusal crosses back as the holder's own error, a reset while
queued leaves the holder's queue, and the holder frees the slot and charges the
tenant's counter with the runner's usage when the relay ends.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from outpost.control_plane.cluster.holder import _RelayedCall as _Call
from outpost.control_plane.routing.admission import Admission, HolderAdmitted, HolderRefused
from outpost.control_plane.services.scheduler import FairScheduler
from outpost.sdk.protocol import EndFrame, ResponseStartFrame
from tests.cluster.test_cluster_inprocess import REDIS_URL, Pair, ScriptedRunner, _wait


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair(f"test-{secrets.token_hex(4)}")
    # B holds the runner and admits for both replicas; one waiter at most.
    p.b.holder.admission = Admission(
        scheduler=FairScheduler(max_queue_per_runner=1), queue_timeout_s=30
    )
    await p.a.start()
    await p.b.start()
    try:
        yield p
    finally:
        for node in (p.a, p.b):
            if node._tasks and not all(t.done() for t in node._tasks):  # not one a test crashed
                await asyncio.wait_for(node.stop(grace_s=0.5), 10)
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{p.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _open(pair: Pair, tenant: str) -> Any:
    link = pair.hub_a.lookup("run_1").usable_link()  # type: ignore[union-attr]
    assert link is not None and link.holder_admits
    return await link.open_stream(
        path="/v1/chat/completions",
        model="m",
        body="{}" * 50,
        stream=True,
        admit={"tenant_id": tenant, "weight": 1.0, "prompt_tokens": 5, "max_tokens": 900},
    )


def _queue(pair: Pair) -> dict:
    assert pair.b.holder.admission is not None
    return pair.b.holder.admission.scheduler.snapshot()["runners"]["run_1"]


async def test_holder_queues_refuses_and_drops_relayed_requests(pair: Pair) -> None:
    script = ScriptedRunner(["tok "] * 300, delay_s=0.01)
    held = await pair.with_runner(script)
    held.capacity = 1
    first = await _open(pair, "ten_a")
    assert isinstance(await first.next_event(3), HolderAdmitted)
    assert isinstance(await first.next_event(3), ResponseStartFrame)

    queued = await _open(pair, "ten_b")
    await _wait(lambda: _queue(pair)["queued"] == 1, 3, "the second request in B's queue")
    assert _queue(pair)["in_flight"] == 1 and not pair.a._streams[queued.key]._events

    # The queue is full: the holder's 429 reaches the origin as is, Retry-After included.
    refused = await _open(pair, "ten_c")
    ev = await refused.next_event(3)
    assert isinstance(ev, HolderRefused), ev
    assert (ev.error.status, ev.error.code, ev.error.type) == (429, "queue_full", "queue_full")
    assert ev.error.headers == {"Retry-After": "1"} and "is full" in ev.error.message

    # The origin's client leaves while queued: the reset takes it out of B's queue, never
    # dispatched.
    await queued.cancel("client disconnected")
    await _wait(
        lambda: _queue(pair)["queued"] == 0 and _queue(pair)["abandoned"] == 1, 3, "B to drop it"
    )
    assert script.credit.keys() == {1}  # the runner only ever saw the first request

    # The first runs to its end: the holder charges ten_a's counter with the usage and frees the
    # slot.
    while not isinstance(ev := await first.next_event(5), EndFrame):
        await first.consumed(len(ev) if isinstance(ev, str) else 0)
    await _wait(
        lambda: _queue(pair)["in_flight"] == 0 and pair.b.holder.active == 0,
        3,
        "the slot to be freed",
    )
    assert (
        _queue(pair)["counters"]["ten_a"] == 3 * 1 + 300 * 2
    )  # the runner's usage: 3 prompt, 300 output
    assert "ten_b" not in _queue(pair)["counters"]  # its lift was taken back with its backlog


async def test_the_holders_queue_timeout_reaches_the_origin(pair: Pair) -> None:
    assert pair.b.holder.admission is not None
    pair.b.holder.admission.queue_timeout_s = 0.3
    script = ScriptedRunner(["tok "] * 300, delay_s=0.01)
    held = await pair.with_runner(script)
    held.capacity = 1
    first = await _open(pair, "ten_a")
    assert isinstance(await first.next_event(3), HolderAdmitted)
    waiting = await _open(pair, "ten_b")
    ev = await waiting.next_event(5)
    assert isinstance(ev, HolderRefused), ev
    assert (ev.error.status, ev.error.code, ev.error.headers) == (
        503,
        "queue_timeout",
        {"Retry-After": "5"},
    )
    assert _queue(pair)["queued"] == 0 and _queue(pair)["abandoned"] == 1
    await first.cancel("client disconnected")
    await _wait(lambda: _queue(pair)["in_flight"] == 0, 3, "the slot to be freed")


async def test_a_dead_origins_requests_leave_the_holders_queue(pair: Pair) -> None:
    held = await pair.with_runner(ScriptedRunner(["x"]))
    held.capacity = 1
    admission = pair.b.holder.admission
    assert admission is not None
    local = await admission.acquire(
        _Call("local", "ten_x", None), held, prompt_tokens=1
    )  # B's own, holding the slot
    await _open(pair, "ten_a")
    await _wait(lambda: _queue(pair)["queued"] == 1, 3, "A's request in B's queue")
    # A stops heartbeating and reading without withdrawing (a crash): its entry expires after the
    # TTL.
    for task in pair.a._tasks:
        task.cancel()
    await _wait(
        lambda: _queue(pair)["queued"] == 0 and _queue(pair)["abandoned"] == 1, 5, "B to drop it"
    )
    assert "ten_a" not in _queue(pair)["counters"]
    local.finish_at_holder(None)
    await pair.a.redis.aclose()
    pair.a._tasks = []
