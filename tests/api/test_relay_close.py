"""The SSE relay at the end of a stream: the client hangs up after the whole answer, or in the
middle of it; the engine's ``[DONE]`` waits for the runner's end frame and the record's commit.

The race this pins down: the client has the whole answer and closes the connection
before the runner's end frame (with the usage) reaches the control plane — likelier
when the stream is relayed through another replica (tests/cluster/test_relay.py). The
answer was delivered: the record must say ``ok`` with the usage, not ``cancelled``.

Durable before done (issue 20): the client gets ``data: [DONE]`` only once the record
and its audit event are committed, so the relay holds the engine's ``[DONE]`` back
until the end frame has arrived and the writer's future has resolved.

The tunnel stream is the real ``Stream``; the application state around it is
an honest stand-in that records what the relay hands it, and whose "commit" the
test resolves.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from outpost.control_plane.openai import lifecycle, serving
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.disconnect import ClientGone
from outpost.control_plane.openai.failover import Opened
from outpost.control_plane.openai.lifecycle import RequestLife
from outpost.control_plane.routing.routing import RouteRequest
from outpost.control_plane.tunnel.stream import LinkClosed, Stream
from outpost.sdk.protocol import DataFrame, EndFrame, ResponseStartFrame, Usage

MODEL = "smollm2-135m-instruct"
BODY = (
    '{"messages": [{"role": "user", "content": "Say hello to the whole world"}], "max_tokens": 8}'
)


class _Records:
    """The record writer's seam: ``submit`` returns a future the test resolves (the commit)."""

    def __init__(self) -> None:
        self.saved: list[Any] = []
        self.commits: list[asyncio.Future[bool]] = []
        self.hold = False  # True: commits wait for the test

    def submit(self, record: Any) -> asyncio.Future[bool]:
        self.saved.append(record)
        done = asyncio.get_running_loop().create_future()
        if not self.hold:
            done.set_result(True)
        self.commits.append(done)
        return done

    async def wait(self, done: asyncio.Future[bool], timeout: float | None = None) -> bool:
        return await asyncio.shield(done)


class _State(SimpleNamespace):
    def __init__(self) -> None:
        records = _Records()
        super().__init__(
            records=records,
            saved=records.saved,
            settings=SimpleNamespace(records_commit_wait_s=10.0),
            router=SimpleNamespace(
                observe=lambda *a, **k: None,
                finished=lambda runner: None,
                started=lambda runner: None,
                served=lambda route, runner_id: None,
            ),
            hub=SimpleNamespace(is_served=lambda model: True),
            metrics=SimpleNamespace(observe_inference=lambda **k: None),
        )


class _Slot:
    """The admission slot's seam: admitted at once, nothing to price."""

    queue_wait_s, started = 0.0, True

    def finish(self, usage: Usage | None, ttft_ms: float | None = None) -> None:
        pass

    def record_fields(self) -> dict[str, Any]:
        return {}


def _relay(state: _State, lives: list[RequestLife] | None = None) -> tuple[Any, Stream, list[str]]:
    resets: list[str] = []

    async def grant(stream_id: int, n: int) -> None:
        pass

    async def reset(stream_id: int, reason: str) -> None:
        resets.append(reason)

    stream = Stream(1, window=1 << 20, grant=grant, reset=reset)
    start = ResponseStartFrame(stream_id=1, status=200, content_type="text/event-stream")
    stream.deliver(start)
    first = DataFrame(stream_id=1, data='data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n')
    stream.deliver(first)
    # serve_inference read these two already
    assert (stream._events.popleft(), stream._events.popleft()) == (start, first.data)
    call = InferenceCall(
        tenant_id="ten_1", api_key_id=None, route=RouteRequest(model=MODEL), body=BODY, stream=True
    )
    runner = SimpleNamespace(runner_id="run_1", serves=lambda model: None)
    link = SimpleNamespace(close_stream=lambda s: None)
    life = RequestLife(state, call)  # type: ignore[arg-type]  # the honest stand-in state
    life.attempt(runner)  # type: ignore[arg-type]
    life.admitted(_Slot())  # type: ignore[arg-type]
    life.dispatched(link, stream)  # type: ignore[arg-type]
    life.opened(start, queued=False)
    if lives is not None:  # the caller plays the response around the body
        lives.append(life)
    opened = Opened(runner=runner, link=link, stream=stream, start=start, first=first.data)  # type: ignore[arg-type]
    return serving._relay_stream(life, opened), stream, resets


async def _settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.gather(*lifecycle._background)


async def test_done_goes_out_after_the_end_frame_and_the_commit() -> None:
    state = _State()
    state.records.hold = True
    body, stream, resets = _relay(state)
    assert "Hi" in await anext(body)
    stream.deliver(DataFrame(stream_id=1, data='data: {"choices":[]}\n\ndata: [DONE]\n\n'))
    assert await anext(body) == 'data: {"choices":[]}\n\n', (
        "the answer goes out, its [DONE] is held back"
    )
    tail = asyncio.ensure_future(anext(body))
    await _turns()
    assert not tail.done() and state.saved == [], "[DONE] waits for the runner's end frame (usage)"
    stream.deliver(EndFrame(stream_id=1, usage=Usage(prompt_tokens=7, completion_tokens=2)))
    await _turns()
    [record] = state.saved
    assert (record.status, record.prompt_tokens, record.completion_tokens) == ("ok", 7, 2)
    assert not tail.done(), "[DONE] waits for the record's commit"
    state.records.commits[0].set_result(True)
    assert await tail == "data: [DONE]\n\n"
    with pytest.raises(StopAsyncIteration):
        await anext(body)
    assert resets == []


async def test_an_error_event_and_done_go_out_after_the_commit() -> None:
    state = _State()
    state.records.hold = True
    body, stream, _ = _relay(state)
    await anext(body)
    stream.deliver(EndFrame(stream_id=1, error="engine crashed"))
    tail = asyncio.ensure_future(anext(body))
    await _turns()
    [record] = state.saved
    assert (record.status, record.error_type) == ("error", "engine_error") and not tail.done()
    state.records.commits[0].set_result(True)
    text = await tail
    assert '"engine_error"' in text and text.endswith("data: [DONE]\n\n")


async def test_a_runner_lost_after_the_answer_still_ends_with_done() -> None:
    state = _State()
    body, stream, _ = _relay(state)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    tail = asyncio.ensure_future(anext(body))
    await _turns()
    stream.deliver(LinkClosed("tunnel dropped"))
    assert await tail == "data: [DONE]\n\n", "the answer stands: no error event after it"
    [record] = state.saved
    assert (record.status, record.error_type) == ("ok", None)


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _hang_up_waiting_for_done(body: Any, stream: Stream) -> None:
    """The client has the whole answer and hangs up while the relay waits for the end frame."""
    waiting = asyncio.ensure_future(anext(body))
    await _turns()
    assert not waiting.done()
    stream.interrupt(ClientGone())  # what RelayResponse's disconnect watch does
    with pytest.raises(ClientGone):
        await waiting
    stream.resume()  # the response's watch is over once the body has stopped


async def test_hanging_up_after_the_answer_keeps_the_request_ok_with_its_usage() -> None:
    state = _State()
    body, stream, resets = _relay(state)
    assert "Hi" in await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    await _hang_up_waiting_for_done(body, stream)  # the end frame is still on its way
    assert state.saved == []  # not written as cancelled in the meantime
    stream.deliver(EndFrame(stream_id=1, usage=Usage(prompt_tokens=7, completion_tokens=2)))
    await _settled()
    [record] = state.saved
    assert (record.status, record.error_type) == ("ok", None)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 2)
    assert resets == []  # the engine had finished: nothing to stop


async def test_hanging_up_mid_answer_cancels_the_engine_and_says_so() -> None:
    state = _State()
    body, _, resets = _relay(state)
    assert "Hi" in await anext(body)
    await body.aclose()
    await _settled()
    [record] = state.saved
    assert (record.status, record.error_type) == ("cancelled", "client_disconnected")
    assert resets == ["client disconnected"]


async def test_an_end_frame_that_never_comes_stops_the_stream_and_keeps_the_record(
    monkeypatch,
) -> None:
    monkeypatch.setattr(lifecycle, "END_AFTER_ANSWER_S", 0.05)
    state = _State()
    body, stream, resets = _relay(state)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    await _hang_up_waiting_for_done(body, stream)
    await asyncio.sleep(0.1)
    await _settled()
    [record] = state.saved
    assert record.status == "cancelled" and resets == ["client disconnected"]


# The relay learns of a hang-up as ClientGone at its next wait (openai/relay_response.py).


async def test_a_client_gone_while_the_relay_waits_cancels_the_engine_and_says_so() -> None:
    state = _State()
    body, stream, resets = _relay(state)
    assert "Hi" in await anext(body)
    stream.interrupt(ClientGone())
    with pytest.raises(ClientGone):
        await anext(body)
    await _settled()
    [record] = state.saved
    assert (record.status, record.error_type) == ("cancelled", "client_disconnected")
    assert resets == ["client disconnected"]


async def test_the_responses_background_settle_leaves_an_answered_stream_to_its_end_frame() -> None:
    # RelayResponse runs the background settle as soon as the body stops; settling
    # then would reset the stream and drop the end frame on its way (seen through
    # another replica in tests/cluster/test_relay.py: recorded cancelled, no usage).
    state, lives = _State(), []
    body, stream, resets = _relay(state, lives)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    waiting = asyncio.ensure_future(anext(body))
    await _turns()
    stream.interrupt(ClientGone())
    with pytest.raises(ClientGone):
        await waiting
    await lives[0].close()  # the response's background task
    for _ in range(20):  # let anything it started run
        await asyncio.sleep(0)
    assert resets == [] and not stream.finished
    stream.resume()
    stream.deliver(EndFrame(stream_id=1, usage=Usage(prompt_tokens=7, completion_tokens=2)))
    await _settled()
    [record] = state.saved
    assert (record.status, record.prompt_tokens, record.completion_tokens) == ("ok", 7, 2)
    assert resets == []


async def test_data_queued_before_the_hang_up_is_still_relayed() -> None:
    state = _State()
    body, stream, _ = _relay(state)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: more\n\n"))
    stream.interrupt(ClientGone())
    assert await anext(body) == "data: more\n\n"
    with pytest.raises(ClientGone):
        await anext(body)
    await _settled()
