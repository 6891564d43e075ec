"""The relay reads the engine's SSE in batches and sends what arrived together in one data frame.

The engine is an ``httpx.MockTransport`` (through ``HttpxEngineClient``) whose answer arrives in the
byte chunks a test chooses, with a pause after each (``PAUSE``) so that each chunk is a batch of its
own unless a test says otherwise; every split a socket can produce (mid-line, mid UTF-8 character,
between ``\\r`` and ``\\n``) is exercised deterministically. The runner's own client (aiohttp) is
tested against real servers in test_engine_client.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from outpost.runner.engine_client import HttpxEngineClient
from outpost.runner.relay import EngineEndpoint, relay
from outpost.runner.sse import MAX_READ_AHEAD, line_batches, read_ahead
from outpost.runner.streams import OutboundStream
from outpost.sdk.errors import error_body
from outpost.sdk.protocol import (
    MAX_DATA_BYTES,
    DataFrame,
    EndFrame,
    RequestFrame,
    ResponseStartFrame,
)

MODEL = "m"
ENGINE = EngineEndpoint("http://engine.test", {}, {MODEL: "upstream-m"})
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
PAUSE = 0.01  # between two chunks of the engine: the relay takes each alone


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _delta(text: str) -> dict[str, Any]:
    return {
        "model": "upstream-m",
        "timings": {"x": 1},
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


def _response(
    chunks: list[bytes], pause: float | None = PAUSE, fail: Exception | None = None
) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c
            if pause is not None:  # None: buffered chunks, taken without waiting for I/O
                await asyncio.sleep(pause)
        if fail is not None:
            raise fail

    return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})


async def _batches(chunks: list[bytes], pause: float | None = PAUSE) -> list[list[str]]:
    async with aclosing(
        line_batches(read_ahead(_response(chunks, pause).aiter_bytes()))
    ) as batches:
        return [b async for b in batches]


async def test_lines_are_grouped_by_the_chunk_that_completed_them() -> None:
    batches = await _batches([b"data: a\n\ndata: b\n\n", b"data: c\n", b"\n"])
    assert batches == [["data: a", "", "data: b", ""], ["data: c"], [""]]


async def test_chunks_already_read_when_the_caller_asks_are_one_batch() -> None:
    # No pause: the engine's chunks are all buffered, as when the relay fell behind.
    batches = await _batches([b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"], pause=None)
    assert batches == [["data: a", "", "data: b", "", "data: c", ""]]


async def test_the_reader_stops_when_the_caller_does_not_take_its_batches() -> None:
    # A relay waiting for flow-control credit: the reader must not buffer the whole answer.
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):
            pulled += 1
            yield b"data: " + b"x" * 1000 + b"\n\n"

    resp = httpx.Response(200, content=body())
    async with aclosing(line_batches(read_ahead(resp.aiter_bytes()))) as batches:
        first = await anext(batches)
        await asyncio.sleep(0.05)  # the caller is busy; the reader runs ahead, then waits
        assert pulled * 1000 < 3 * MAX_READ_AHEAD, pulled  # the batch taken and one read ahead
        assert len(first) >= 2
    await asyncio.sleep(0)
    assert pulled < 1000, "closing the batches stopped the reader"


async def test_a_read_error_reaches_the_caller_after_the_lines_before_it() -> None:
    resp = _response([b"data: a\n\n"], fail=httpx.ReadError("engine went away"))
    got: list[str] = []
    with pytest.raises(httpx.ReadError):
        async with aclosing(line_batches(read_ahead(resp.aiter_bytes()))) as batches:
            async for lines in batches:
                got += lines
    assert got == ["data: a", ""]


async def test_a_line_split_across_reads_is_joined() -> None:
    text = 'data: {"content":"h\u00e9llo \u2603"}\n\n'.encode()
    for cut in range(1, len(text)):  # every split, a UTF-8 sequence cut in two included
        lines = [ln for b in await _batches([text[:cut], text[cut:]]) for ln in b if ln]
        assert lines == ['data: {"content":"h\u00e9llo \u2603"}'], cut


async def test_every_line_end_the_sse_spec_allows() -> None:
    lines = [
        ln
        for b in await _batches([b"data: a\r\n\r\ndata: b\rdata: c\r", b"\ndata: d"])
        for ln in b
        if ln
    ]
    assert lines == [
        "data: a",
        "data: b",
        "data: c",
        "data: d",
    ]  # a last line without an end still counts


class Wire:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    async def send(self, frame: Any) -> None:
        self.frames.append(frame)

    @property
    def datas(self) -> list[str]:
        return [f.data for f in self.frames if isinstance(f, DataFrame)]


async def _relay(chunks: list[bytes], *, include_usage: bool = False) -> Wire:
    def engine(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        assert sent["model"] == "upstream-m" and sent["stream_options"]["include_usage"] is True
        return _response(chunks)

    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    text = json.dumps(body)
    frame = RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model=MODEL,
        body=text,
        body_length=len(text),
        stream=True,
    )
    wire = Wire()
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
        await relay(OutboundStream(frame, wire.send), ENGINE, HttpxEngineClient(http))
    return wire


async def test_events_that_arrive_together_leave_in_one_frame() -> None:
    usage_chunk = {"model": "upstream-m", "choices": [], "usage": USAGE}
    chunks = [
        _event(_delta("a")) + _event(_delta("b")),  # one read, two events
        _event(_delta("c"))[:10],
        _event(_delta("c"))[10:],  # one event over two reads
        _event(usage_chunk) + b"data: [DONE]\n\n",
    ]
    wire = await _relay(chunks)
    assert isinstance(wire.frames[0], ResponseStartFrame)
    events = [
        [json.loads(e[6:]) if e != "data: [DONE]" else e for e in d.split("\n\n") if e]
        for d in wire.datas
    ]
    assert [
        [e["choices"][0]["delta"]["content"] if isinstance(e, dict) else e for e in d]
        for d in events
    ] == [["a", "b"], ["c"], ["data: [DONE]"]], (
        "the usage chunk asked for on the client's behalf is dropped"
    )
    assert all(
        e["model"] == MODEL and "timings" not in e for d in events for e in d if isinstance(e, dict)
    )
    end = wire.frames[-1]
    assert isinstance(end, EndFrame) and end.usage is not None and end.usage.completion_tokens == 3


async def test_the_client_asked_for_usage_and_gets_it_in_the_batch() -> None:
    usage_chunk = {"model": "upstream-m", "choices": [], "usage": USAGE}
    wire = await _relay(
        [_event(_delta("a")) + _event(usage_chunk) + b"data: [DONE]\n\n"], include_usage=True
    )
    (data,) = wire.datas
    events = [e for e in data.split("\n\n") if e]
    assert json.loads(events[1][6:])["usage"] == USAGE and events[2] == "data: [DONE]"
    assert wire.frames[-1].usage.prompt_tokens == 9


async def test_a_batch_larger_than_a_frame_is_split_into_frames_in_order() -> None:
    # 40 events of ~1 KiB in one read: more than MAX_DATA_BYTES, so several frames.
    big = "x" * 1000
    wire = await _relay([b"".join(_event(_delta(f"{i}{big}")) for i in range(40))])
    joined = "".join(wire.datas)
    contents = [
        json.loads(e[6:])["choices"][0]["delta"]["content"] for e in joined.split("\n\n") if e
    ]
    assert contents == [f"{i}{big}" for i in range(40)]
    assert len(wire.datas) > 1 and all(len(d) <= MAX_DATA_BYTES for d in wire.datas)


async def test_an_engine_without_a_name_map_is_asked_for_the_public_name() -> None:
    # The fleet's engines have no name map (runner/fleet.py): the body's model goes as it is, and
    # an answer in the engine's own name (llama.cpp says its file path) still reaches the client
    # under the public name.
    def engine(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["model"] == MODEL
        echo = {"model": "/models/m.gguf", "choices": [{"index": 0, "delta": {"content": "a"}}]}
        return _response([_event(echo) + b"data: [DONE]\n\n"])

    text = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    frame = RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model=MODEL,
        body=text,
        body_length=len(text),
        stream=True,
    )
    wire = Wire()
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
        await relay(
            OutboundStream(frame, wire.send),
            EngineEndpoint("http://engine.test", {}),
            HttpxEngineClient(http),
        )
    (data,) = wire.datas
    assert json.loads(data.split("\n\n")[0][6:])["model"] == MODEL


async def test_a_body_the_relay_cannot_read_gets_the_one_error_envelope() -> None:
    frame = RequestFrame(
        stream_id=1, path="/v1/chat/completions", model=MODEL, body="[1]", body_length=3
    )
    wire = Wire()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(500))
    ) as http:
        await relay(OutboundStream(frame, wire.send), ENGINE, HttpxEngineClient(http))
    (data,) = wire.datas
    # The shape the control plane answers with and the SDK reads (sdk/errors.py), every key present.
    assert json.loads(data) == error_body(
        "invalid body: body is not an object", "invalid_request_error"
    )
