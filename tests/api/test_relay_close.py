"""The SSE relay when the client hangs up: after the whole answer, or in the middle of it.

The race this pins down: the engine's closing ``data: [DONE]`` reaches the
client, which closes the connection, before the runner's end frame (with the
usage) reaches the control plane — likelier when the stream is relayed through
another replica (tests/cluster/test_relay.py). The answer was delivered: the
record must say ``ok`` with the usage, not ``cancelled``.

The tunnel stream is the real ``Stream``; the application state around it is
an honest stand-in that records what the relay hands it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.openai import serving
from control_plane.openai.disconnect import ClientGone
from control_plane.openai.serving import InferenceCall, _Opened, _Outcome, _relay_stream
from control_plane.tunnel.stream import Stream
from sdk.protocol import DataFrame, EndFrame, ResponseStartFrame, Usage

MODEL = "smollm2-135m-instruct"
BODY = '{"messages": [{"role": "user", "content": "Say hello to the whole world"}], "max_tokens": 8}'


class _State(SimpleNamespace):
    def __init__(self) -> None:
        records: list[Any] = []
        super().__init__(
            records=SimpleNamespace(submit=records.append), saved=records,
            router=SimpleNamespace(observe=lambda *a, **k: None, finished=lambda runner: None),
            hub=SimpleNamespace(is_served=lambda model: True),
            metrics=SimpleNamespace(observe_inference=lambda **k: None))


def _relay(state: _State, outcomes: list[_Outcome] | None = None) -> tuple[Any, Stream, list[str]]:
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
    stream._events.get_nowait(), stream._events.get_nowait()  # serve_inference read these two already
    call = InferenceCall(tenant_id="ten_1", api_key_id=None, endpoint="/v1/chat/completions", model=MODEL,
                         body=BODY, stream=True)
    opened = _Opened(runner=SimpleNamespace(runner_id="run_1"),  # type: ignore[arg-type]
                     link=SimpleNamespace(close_stream=lambda s: None),  # type: ignore[arg-type]
                     stream=stream, start=start, first=first, attempts=1)
    outcome = _Outcome(call)
    if outcomes is not None:  # the caller plays the response around the body: the real releaser
        outcome.release = serving._releaser(state, opened.runner, opened.link, stream)  # type: ignore[arg-type]
        outcomes.append(outcome)
    return _relay_stream(state, opened, outcome), stream, resets  # type: ignore[arg-type]


async def _settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.gather(*serving._background)


async def test_hanging_up_after_done_keeps_the_request_ok_with_its_usage() -> None:
    state = _State()
    body, stream, resets = _relay(state)
    assert "Hi" in await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    assert (await anext(body)).endswith("data: [DONE]\n\n")
    await body.aclose()  # the client closed the connection; the end frame is still on its way
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


async def test_an_end_frame_that_never_comes_stops_the_stream_and_keeps_the_record(monkeypatch) -> None:
    monkeypatch.setattr(serving, "_END_AFTER_DONE_S", 0.05)
    state = _State()
    body, stream, resets = _relay(state)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    await anext(body)
    await body.aclose()
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


async def test_a_client_gone_after_done_keeps_the_request_ok_with_its_usage() -> None:
    state = _State()
    body, stream, resets = _relay(state)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    assert (await anext(body)).endswith("data: [DONE]\n\n")
    stream.interrupt(ClientGone())
    with pytest.raises(ClientGone):
        await anext(body)
    stream.resume()  # the response's watch is over once the body has stopped
    stream.deliver(EndFrame(stream_id=1, usage=Usage(prompt_tokens=7, completion_tokens=2)))
    await _settled()
    [record] = state.saved
    assert (record.status, record.error_type) == ("ok", None)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 2)
    assert resets == []


async def test_the_responses_background_settle_leaves_an_answered_stream_to_its_end_frame() -> None:
    # RelayResponse runs the background settle as soon as the body stops; settling
    # then would reset the stream and drop the end frame on its way (seen through
    # another replica in tests/cluster/test_relay.py: recorded cancelled, no usage).
    state, outcomes = _State(), []
    body, stream, resets = _relay(state, outcomes)
    await anext(body)
    stream.deliver(DataFrame(stream_id=1, data="data: [DONE]\n\n"))
    await anext(body)
    stream.interrupt(ClientGone())
    with pytest.raises(ClientGone):
        await anext(body)
    await outcomes[0].settle_async()  # the response's background task
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
