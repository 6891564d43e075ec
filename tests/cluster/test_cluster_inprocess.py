"""The relay in one event loop: two Cluster nodes on a real Redis, a scripted runner at the
WebSocket seam.

Fast checks of what the multi-process tests cover end to end, plus the
cases those cannot time precisely: credit held back across the relay, a
holder that vanishes without a word, revocation, the shared rate limiter.
The runner is a script behind a real :class:`~control_plane.tunnel.link.Link`
(only the WebSocket send is replaced), so both replicas run their real code.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from outpost.control_plane.cluster import Cluster, RedisRateLimiter
from outpost.control_plane.cluster.bus import Keys
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import Link
from outpost.control_plane.tunnel.stream import LinkClosed
from outpost.sdk.protocol import (
    MAX_DATA_BYTES,
    CloseCode,
    DataFrame,
    EndFrame,
    ModelInfo,
    RequestFrame,
    ResetFrame,
    ResponseStartFrame,
    Usage,
    WindowUpdateFrame,
    parse_frame,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
WINDOW = MAX_DATA_BYTES  # the smallest window: credit matters after one full frame


class ScriptedRunner:
    """The runner end of one tunnel connection: answers each request with ``chunks``, honouring
    credit."""

    def __init__(self, chunks: list[str], delay_s: float = 0.0) -> None:
        self.chunks, self.delay_s = chunks, delay_s
        self.link = Link(
            "run_1", "s1", self._from_control_plane, 8, self._close, stream_window=WINDOW
        )
        self.credit: dict[int, int] = {}
        self.granted = asyncio.Event()
        self.resets: list[int] = []
        self.closed_with: int | None = None
        self.sent_data = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _from_control_plane(self, text: str) -> None:
        frame = parse_frame(text)
        if isinstance(frame, RequestFrame):
            self.credit[frame.stream_id] = frame.window
            task = asyncio.create_task(self._answer(frame.stream_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(frame, WindowUpdateFrame):
            self.credit[frame.stream_id] += frame.increment
            self.granted.set()
        elif isinstance(frame, ResetFrame):
            self.resets.append(frame.stream_id)

    async def _answer(self, sid: int) -> None:
        self.link.dispatch(
            ResponseStartFrame(stream_id=sid, status=200, content_type="text/event-stream")
        )
        for chunk in self.chunks:
            while self.credit[sid] < len(chunk):
                self.granted.clear()
                await self.granted.wait()
            if sid in self.resets:
                return
            self.credit[sid] -= len(chunk)
            self.link.dispatch(DataFrame(stream_id=sid, data=chunk))
            self.sent_data += len(chunk)
            await asyncio.sleep(self.delay_s)
        if sid not in self.resets:
            self.link.dispatch(
                EndFrame(
                    stream_id=sid, usage=Usage(prompt_tokens=3, completion_tokens=len(self.chunks))
                )
            )

    async def _close(self, code: int, reason: str) -> None:
        self.closed_with = code


def _runner() -> ConnectedRunner:
    return ConnectedRunner(
        runner_id="run_1",
        tenant_id="ten_1",
        name="scripted",
        models=[ModelInfo(name="m", engine="scripted")],
        capacity=2,
    )


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Pair:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hub_a, self.hub_b = TunnelHub(), TunnelHub()
        self.a = Cluster(
            Redis.from_url(REDIS_URL),
            self.hub_a,
            prefix=prefix,
            heartbeat_s=0.2,
            ttl_s=1.0,
            stream_window=WINDOW,
        )
        self.b = Cluster(
            Redis.from_url(REDIS_URL),
            self.hub_b,
            prefix=prefix,
            heartbeat_s=0.2,
            ttl_s=1.0,
            stream_window=WINDOW,
        )

    async def with_runner(self, runner: ScriptedRunner) -> ConnectedRunner:
        held = self.hub_b.attach(runner.link, _runner())
        await _wait(lambda: "run_1" in self.hub_a.remote, 3, "replica A to learn of the runner")
        return held


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair(f"test-{secrets.token_hex(4)}")
    await p.a.start()
    await p.b.start()
    try:
        yield p
    finally:
        for node in (p.a, p.b):
            if node._tasks and not all(t.done() for t in node._tasks):
                try:
                    await asyncio.wait_for(node.stop(grace_s=0.5), 10)
                except TimeoutError:
                    for task in asyncio.all_tasks():
                        task.print_stack()
                    raise
        client = Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{p.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _open(pair: Pair) -> Any:
    runner = pair.hub_a.lookup("run_1")
    assert runner is not None and runner.runner_id not in pair.hub_a.runners  # held only by B
    link = runner.usable_link()
    assert link is not None
    return await link.open_stream(path="/v1/chat/completions", model="m", body="{}", stream=True)


async def test_frames_cross_in_order_with_usage(pair: Pair) -> None:
    script = ScriptedRunner([f"data: {i}\n\n" for i in range(20)])
    held = await pair.with_runner(script)
    assert [r.runner_id for r in pair.hub_a.routable()] == ["run_1"]
    assert pair.hub_a.model_names().keys() == {"m"}
    st = await _open(pair)
    events = []
    while not events or not isinstance(events[-1], EndFrame | ResetFrame | LinkClosed):
        events.append(await st.next_event(5))
    assert isinstance(events[0], ResponseStartFrame) and events[0].status == 200
    assert events[1:-1] == script.chunks  # a reader gets data as its text
    assert events[-1].usage == Usage(prompt_tokens=3, completion_tokens=20)
    await _wait(
        lambda: held.in_flight == 0 and pair.b.holder.active == 0, 2, "the holder to finish"
    )
    assert not pair.a._streams


async def test_credit_is_granted_only_as_the_origin_consumes(pair: Pair) -> None:
    chunk = "x" * (WINDOW // 2)
    script = ScriptedRunner([chunk] * 6)
    await pair.with_runner(script)
    st = await _open(pair)
    await _wait(lambda: script.sent_data == WINDOW, 3, "the first window")
    await asyncio.sleep(0.5)
    assert script.sent_data == WINDOW, "the runner sent past its window: credit was not held back"
    assert isinstance(await st.next_event(2), ResponseStartFrame)
    for _ in range(2):
        ev = await st.next_event(2)
        assert isinstance(ev, str)
        await st.consumed(len(ev))  # the client read it: credit flows back through Redis
    await _wait(lambda: script.sent_data == 2 * WINDOW, 3, "the next window after credit")


async def test_cancel_at_the_origin_resets_the_runners_stream(pair: Pair) -> None:
    script = ScriptedRunner(["tok "] * 500, delay_s=0.01)
    held = await pair.with_runner(script)
    st = await _open(pair)
    for _ in range(4):
        await st.next_event(3)
    await st.cancel("client disconnected")
    await _wait(lambda: script.resets == [1], 3, "a reset frame on the runner's tunnel")
    await _wait(lambda: held.in_flight == 0 and pair.b.holder.active == 0, 2, "the relay to end")
    assert script.sent_data < 500 * 4


async def test_a_holder_that_dies_silently_fails_its_streams(pair: Pair) -> None:
    script = ScriptedRunner(["tok "] * 500, delay_s=0.05)
    await pair.with_runner(script)
    st = await _open(pair)
    assert isinstance(await st.next_event(3), ResponseStartFrame)
    # B stops heartbeating and reading without withdrawing (a crash): its entry expires after the
    # TTL.
    for task in pair.b._tasks:
        task.cancel()
    t0 = time.monotonic()
    while not isinstance(ev := await st.next_event(5), LinkClosed):
        assert isinstance(ev, str)
    assert time.monotonic() - t0 < 3.0
    await _wait(lambda: "run_1" not in pair.hub_a.remote, 2, "A to forget the runner")
    await pair.b.redis.aclose()
    pair.b._tasks = []


async def test_open_to_a_gone_holder_fails_at_once(pair: Pair) -> None:
    await pair.with_runner(ScriptedRunner(["x"]))
    await pair.b.bus.close()  # its inbox is gone, as after its TTL
    runner = pair.hub_a.lookup("run_1")
    assert runner is not None
    with pytest.raises(ConnectionError):
        await runner.usable_link().open_stream(
            path="/v1/chat/completions", model="m", body="{}", stream=False
        )
    assert not pair.a._streams


async def test_revocation_closes_links_on_other_replicas(pair: Pair) -> None:
    script = ScriptedRunner(["x"])
    await pair.with_runner(script)
    await pair.a.disconnect_everywhere("run_1", CloseCode.REVOKED, "runner revoked")
    await _wait(
        lambda: script.closed_with == int(CloseCode.REVOKED), 3, "B to close the runner's link"
    )


async def test_local_runner_is_preferred_and_remote_one_takes_over(pair: Pair) -> None:
    """A runner with tunnels on both replicas is local to each; when A's drops, A relays to B."""
    on_b = ScriptedRunner(["from b"])
    await pair.with_runner(on_b)
    on_a = ScriptedRunner(["from a"])
    pair.hub_a.attach(on_a.link, _runner())
    assert pair.hub_a.lookup("run_1") is pair.hub_a.runners["run_1"]
    assert len(pair.hub_a.routable()) == 1
    on_a.link.fail_all("dropped")
    pair.hub_a.detach(on_a.link)
    st = await _open(pair)
    assert isinstance(await st.next_event(3), ResponseStartFrame)
    assert await st.next_event(3) == "from b"
    # Admission still knows the runner's capacity after the local link left.
    assert pair.a.hub.remote["run_1"].capacity == 2


async def test_rate_limit_bucket_is_shared() -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    one, two = Redis.from_url(REDIS_URL), Redis.from_url(REDIS_URL)
    try:
        a, b = RedisRateLimiter(one, Keys(prefix)), RedisRateLimiter(two, Keys(prefix))
        decisions = [await (a if i % 2 else b).acquire("key_1", 3) for i in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
        assert 15 < decisions[3].retry_after_s <= 20.5  # one token back after 60/3 s
        assert (await a.acquire("key_2", 3)).allowed  # buckets are per key
        assert not (await a.acquire("key_3", 0)).allowed
    finally:
        await one.delete(f"{prefix}:rate:key_1", f"{prefix}:rate:key_2")
        await one.aclose()
        await two.aclose()


async def test_rate_limiter_falls_back_per_replica_without_redis() -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(dead, Keys("test-dead"))
    decisions = [await limiter.acquire("key_1", 2) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    await dead.aclose()
