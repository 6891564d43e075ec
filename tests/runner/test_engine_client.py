"""The runner's engine client (aiohttp) against real HTTP servers on loopback.

The engine here is a small asyncio server whose answers each test scripts
byte for byte (chunked or ``Content-Length`` bodies, pauses, closing the
connection, never answering), and which counts the connections it accepted
and notices when the client closes one. Through ``relay`` the same server
checks what the tunnel sees: status passthrough, the error frame for an
engine that is not there, and a cancelled stream aborting the engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from outpost.runner.engine_client import AiohttpEngineClient, EngineError
from outpost.runner.relay import EngineEndpoint, relay
from outpost.runner.sse import line_batches
from outpost.runner.streams import OutboundStream
from outpost.sdk.protocol import DataFrame, EndFrame, RequestFrame, ResponseStartFrame

Writer = asyncio.StreamWriter


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: Writes the answer to one request; returns False to close the connection after it.
Script = Callable[[Request, Writer], Awaitable[bool | None]]


@dataclass
class Engine:
    script: Script
    port: int = 0
    connections: int = 0  # accepted
    requests: list[Request] = field(default_factory=list)
    client_closed: asyncio.Event = field(
        default_factory=asyncio.Event
    )  # a client closed a connection

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.connections += 1
        buf = bytearray()
        more = asyncio.Event()
        eof = False

        async def pump() -> None:
            # Reads all the time, so a client that closes is noticed even mid-answer.
            nonlocal eof
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    buf.extend(data)
                    more.set()
            eof = True
            self.client_closed.set()
            more.set()

        async def until(ready: Callable[[], int]) -> int:
            while (n := ready()) < 0 and not eof:
                more.clear()
                await more.wait()
            return n

        pumping = asyncio.create_task(pump())
        try:
            while True:
                end = await until(lambda: buf.find(b"\r\n\r\n"))
                if end < 0:
                    return
                line, *fields = buf[:end].decode().split("\r\n")
                method, path, _ = line.split(" ")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (f.partition(":") for f in fields if f)
                }
                size = end + 4 + int(headers.get("content-length", 0))
                if await until(lambda n=size: n if len(buf) >= n else -1) < 0:
                    return
                req = Request(method, path, headers, bytes(buf[end + 4 : size]))
                del buf[:size]
                self.requests.append(req)
                if await self.script(req, writer) is False:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            pumping.cancel()
            writer.close()


@asynccontextmanager
async def engine(script: Script) -> AsyncIterator[Engine]:
    eng = Engine(script)
    server = await asyncio.start_server(eng.serve, "127.0.0.1", 0)
    eng.port = server.sockets[0].getsockname()[1]
    try:
        yield eng
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def client(**kw: Any) -> AsyncIterator[AiohttpEngineClient]:
    c = AiohttpEngineClient(**kw)
    try:
        yield c
    finally:
        await c.aclose()


def head(status: int = 200, ctype: str = "text/event-stream", **extra: str) -> bytes:
    lines = [
        f"HTTP/1.1 {status} X",
        f"Content-Type: {ctype}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def whole(status: int, body: bytes, **extra: str) -> bytes:
    return head(status, "application/json", **{"Content-Length": str(len(body)), **extra}) + body


def events(*texts: str) -> list[bytes]:
    return [
        f"data: {json.dumps({'model': 'up', 'choices': [{'delta': {'content': t}}]})}\n\n".encode()
        for t in texts
    ]


async def sse(req: Request, w: Writer, parts: list[bytes], pause: float = 0.01) -> None:
    w.write(head(200, **{"Transfer-Encoding": "chunked"}))
    for p in parts:
        w.write(chunk(p))
        await w.drain()
        await asyncio.sleep(pause)
    w.write(b"0\r\n\r\n")
    await w.drain()


async def lines_of(c: AiohttpEngineClient, url: str, **kw: Any) -> tuple[int, list[list[str]]]:
    async with (
        c.request(
            "POST", url + "/v1/chat/completions", headers=kw.get("headers", {}), body=b"{}"
        ) as resp,
        aclosing(line_batches(resp.batches())) as batches,
    ):
        return resp.status, [b async for b in batches]


async def test_a_chunked_stream_arrives_as_lines_and_the_request_as_sent() -> None:
    async def script(req: Request, w: Writer) -> None:
        await sse(req, w, [*events("a", "b"), b"data: [DONE]\n\n"])

    async with engine(script) as eng, client() as c:
        body = json.dumps(
            {"model": "up", "messages": [{"role": "user", "content": "h\u00e9"}]}
        ).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer engine-key"}
        async with c.request(
            "POST", eng.url + "/v1/chat/completions", headers=headers, body=body
        ) as resp:
            assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
            got = [ln async for b in line_batches(resp.batches()) for ln in b if ln]
    assert [json.loads(g[6:])["choices"][0]["delta"]["content"] for g in got[:2]] == ["a", "b"]
    assert got[2] == "data: [DONE]"
    (req,) = eng.requests
    assert (req.method, req.path, req.body) == ("POST", "/v1/chat/completions", body)
    assert req.headers["authorization"] == "Bearer engine-key"  # the attach mode's API key
    assert req.headers["content-type"] == "application/json"


async def test_a_content_length_body_is_read_whole() -> None:
    payload = json.dumps({"model": "up", "usage": {"prompt_tokens": 1}}).encode()

    async def script(req: Request, w: Writer) -> None:
        w.write(whole(200, payload))

    async with (
        engine(script) as eng,
        client() as c,
        c.request("POST", eng.url + "/v1/chat/completions", headers={}, body=b"{}") as resp,
    ):
        assert resp.status == 200 and await resp.read() == payload


async def test_connections_are_kept_alive_and_reused() -> None:
    async def script(req: Request, w: Writer) -> None:
        if req.path == "/stream":
            await sse(req, w, events("a"))
        else:
            w.write(whole(200, b"{}"))

    async with engine(script) as eng, client() as c:
        for path in ("/stream", "/whole", "/stream", "/whole"):
            async with c.request("POST", eng.url + path, headers={}, body=b"{}") as resp:
                await resp.read()
    assert eng.connections == 1 and len(eng.requests) == 4


async def test_error_statuses_pass_through_with_their_body() -> None:
    answers = {
        "/404": (404, b'{"error":{"message":"no such model"}}'),
        "/503": (503, b'{"error":"loading"}'),
    }

    async def script(req: Request, w: Writer) -> None:
        w.write(whole(*answers[req.path]))

    async with engine(script) as eng, client() as c:
        for path, (status, body) in answers.items():
            async with c.request("POST", eng.url + path, headers={}, body=b"{}") as resp:
                assert (resp.status, await resp.read()) == (status, body)
    assert eng.connections == 1, "an error answer read to its end leaves the connection reusable"


async def test_leaving_mid_body_closes_the_connection_and_the_next_request_opens_another() -> None:
    async def script(req: Request, w: Writer) -> None:
        if req.path == "/slow":
            await sse(req, w, events(*"abcdefghij"), pause=0.5)
        else:
            w.write(whole(200, b"{}"))

    async with engine(script) as eng, client() as c:
        async with c.request("POST", eng.url + "/slow", headers={}, body=b"{}") as resp:
            async for _ in resp.batches():
                break  # the tunnel's client went away after the first event
        await asyncio.wait_for(eng.client_closed.wait(), 2)  # the engine sees the abort at once
        async with c.request("POST", eng.url + "/next", headers={}, body=b"{}") as resp:
            assert await resp.read() == b"{}"
    assert eng.connections == 2, "a connection left mid-body is never reused"


async def test_cancelling_a_reader_mid_body_aborts_the_engine_request() -> None:
    first = asyncio.Event()

    async def script(req: Request, w: Writer) -> None:
        await sse(req, w, events(*"abcdefghij"), pause=0.5)

    async def read(c: AiohttpEngineClient, url: str) -> None:
        async with c.request("POST", url, headers={}, body=b"{}") as resp:
            async for _ in resp.batches():
                first.set()

    async with engine(script) as eng, client() as c:
        task = asyncio.create_task(read(c, eng.url + "/v1/chat/completions"))
        await asyncio.wait_for(first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eng.client_closed.wait(), 2)


async def test_an_engine_that_closes_after_answering_gets_a_new_connection_next_time() -> None:
    async def script(req: Request, w: Writer) -> bool:
        w.write(whole(200, b'{"ok":1}', Connection="close"))
        await w.drain()
        return False

    async with engine(script) as eng, client() as c:
        for _ in range(3):
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp:
                assert await resp.read() == b'{"ok":1}'
    assert eng.connections == 3


async def test_an_engine_that_closes_an_idle_keep_alive_connection_is_not_an_error() -> None:
    async def script(req: Request, w: Writer) -> bool:
        w.write(whole(200, b"{}"))
        await w.drain()
        return False  # closes without saying so first

    async with engine(script) as eng, client() as c:
        for _ in range(3):
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp:
                await resp.read()
            await asyncio.sleep(0.05)  # the close has arrived before the next request
    assert eng.connections == 3


async def test_kept_alive_connection_closed_as_the_request_arrives_is_retried_once() -> None:
    served: set[int] = set()

    async def script(req: Request, w: Writer) -> bool:
        if id(w) in served:
            return False  # its idle timeout fired as this request came in: closed, no answer
        served.add(id(w))
        w.write(whole(200, b'{"ok":1}'))
        await w.drain()
        return True

    async with engine(script) as eng, client() as c:
        for _ in range(3):
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp:
                assert await resp.read() == b'{"ok":1}'
    # Requests 2 and 3 each failed once on the kept-alive connection, then got a new one.
    assert eng.connections == 3 and len(eng.requests) == 5


async def test_engine_closing_every_connection_unanswered_is_an_error_after_one_retry() -> None:
    async def script(req: Request, w: Writer) -> bool:
        return False

    async with engine(script) as eng, client() as c:
        with pytest.raises(EngineError) as err:
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}"):
                pass
    assert err.value.kind == "ServerDisconnectedError" and eng.connections == 2


async def test_an_engine_that_breaks_off_mid_body_is_an_engine_error_after_what_arrived() -> None:
    async def script(req: Request, w: Writer) -> bool:
        w.write(head(200, **{"Transfer-Encoding": "chunked"}) + chunk(events("a")[0]))
        await w.drain()
        await asyncio.sleep(0.05)
        return False  # gone without the last chunk

    async with engine(script) as eng, client() as c:
        got: list[str] = []
        with pytest.raises(EngineError):
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp:
                async for lines in line_batches(resp.batches()):
                    got += lines
    assert got[0].startswith("data: ") and eng.connections == 1


async def test_a_short_content_length_body_is_an_engine_error() -> None:
    async def script(req: Request, w: Writer) -> bool:
        w.write(head(200, "application/json", **{"Content-Length": "100"}) + b'{"partial"')
        await w.drain()
        return False

    async with engine(script) as eng, client() as c:
        with pytest.raises(EngineError):
            async with c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp:
                await resp.read()


async def test_an_engine_that_is_not_there_is_an_engine_error() -> None:
    async with engine(lambda req, w: asyncio.sleep(0)) as eng:
        url = eng.url
    async with client() as c:
        with pytest.raises(EngineError) as info:
            async with c.request("POST", url + "/v1/x", headers={}, body=b"{}"):
                pass
    assert info.value.kind == "ClientConnectorError"


async def test_a_read_timeout_when_one_is_set() -> None:
    async def script(req: Request, w: Writer) -> None:
        await asyncio.sleep(5)  # never answers in time

    async with engine(script) as eng, client(read_timeout_s=0.2) as c:
        with pytest.raises(EngineError, match="Timeout"):
            async with (
                asyncio.timeout(3),
                c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}"),
            ):
                pass


async def test_no_timeout_by_default_for_a_slow_engine() -> None:
    async def script(req: Request, w: Writer) -> None:
        await asyncio.sleep(0.5)  # e.g. a long prompt being processed
        await sse(req, w, events("a"))

    async with engine(script) as eng, client() as c:
        status, batches = await lines_of(c, eng.url)
    assert status == 200 and batches


async def test_what_arrived_while_the_caller_was_busy_is_one_batch() -> None:
    async def script(req: Request, w: Writer) -> None:
        await sse(req, w, [*events("a", "b", "c"), b"data: [DONE]\n\n"], pause=0)

    async with (
        engine(script) as eng,
        client() as c,
        c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp,
    ):
        await asyncio.sleep(0.1)  # a relay waiting for credit
        batches = [b async for b in line_batches(resp.batches())]
    assert len(batches) == 1 and sum(1 for ln in batches[0] if ln) == 4


async def test_a_caller_that_stops_taking_batches_stops_the_engine_writes() -> None:
    # Flow control: a relay waiting for credit must not let the client buffer the whole answer.
    total, written = 64 << 20, 0

    async def script(req: Request, w: Writer) -> None:
        nonlocal written
        w.write(head(200, **{"Transfer-Encoding": "chunked"}))
        piece = chunk(b"data: " + b"x" * 65_000 + b"\n\n")
        while written < total:
            w.write(piece)
            await w.drain()
            written += len(piece)

    async with (
        engine(script) as eng,
        client() as c,
        c.request("POST", eng.url + "/v1/x", headers={}, body=b"{}") as resp,
    ):
        batches = resp.batches()
        await anext(batches)
        await asyncio.sleep(0.3)
        assert written < total // 4, written
        await batches.aclose()


# --- through the relay: what the tunnel sees --------------------------------------------------


class Wire:
    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.first_data = asyncio.Event()

    async def send(self, frame: Any) -> None:
        self.frames.append(frame)
        if isinstance(frame, DataFrame):
            self.first_data.set()


def _frame(stream: bool = True) -> RequestFrame:
    text = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    )
    return RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model="m",
        body=text,
        body_length=len(text),
        stream=stream,
    )


async def test_relay_passes_an_engine_error_status_through() -> None:
    async def script(req: Request, w: Writer) -> None:
        w.write(whole(429, b'{"error":{"message":"busy"}}'))

    async with engine(script) as eng, client() as c:
        wire = Wire()
        await relay(
            OutboundStream(_frame(), wire.send), EngineEndpoint(eng.url, {}, {"m": "up"}), c
        )
    start, data, end = wire.frames
    assert isinstance(start, ResponseStartFrame) and start.status == 429
    assert (
        json.loads(data.data)["error"]["message"] == "busy"
        and isinstance(end, EndFrame)
        and end.error is None
    )
    assert json.loads(eng.requests[0].body)["model"] == "up"


async def test_relay_ends_a_stream_broken_off_mid_answer_with_one_start_and_an_error_end() -> None:
    # A second response_start would be a protocol violation: the control plane would close the
    # whole connection, and every other stream on it, instead of failing this one (issue 20).
    async def script(req: Request, w: Writer) -> bool:
        w.write(
            head(200, "text/event-stream", **{"Transfer-Encoding": "chunked"})
            + chunk(events("a")[0])
        )
        await w.drain()
        await asyncio.sleep(0.05)
        return False  # gone mid-stream, as a killed engine is

    async with engine(script) as eng, client() as c:
        wire = Wire()
        out = OutboundStream(_frame(), wire.send)
        await relay(out, EngineEndpoint(eng.url, {}, {}), c)
    starts = [f for f in wire.frames if isinstance(f, ResponseStartFrame)]
    assert [s.status for s in starts] == [200]
    assert isinstance(wire.frames[1], DataFrame) and isinstance(wire.frames[-1], EndFrame)
    assert wire.frames[-1].error is not None and wire.frames[-1].error.startswith(
        "engine failed mid-stream"
    )
    assert out.failure == wire.frames[-1].error  # the tunnel logs the stream as an error


async def test_relay_answers_an_unreachable_engine_with_a_clear_error_frame() -> None:
    async with engine(lambda req, w: asyncio.sleep(0)) as eng:
        url = eng.url
    async with client() as c:
        wire = Wire()
        await relay(OutboundStream(_frame(), wire.send), EngineEndpoint(url, {}, {}), c)
    start, end = wire.frames
    assert isinstance(start, ResponseStartFrame) and start.status == 502
    assert isinstance(end, EndFrame) and end.error == "engine unreachable: ClientConnectorError"


async def test_a_cancelled_stream_aborts_the_engine_request() -> None:
    # The tunnel cancels the relay when the client disconnects.
    async def script(req: Request, w: Writer) -> None:
        await sse(req, w, events(*"abcdefghij"), pause=0.5)

    async with engine(script) as eng, client() as c:
        wire = Wire()
        task = asyncio.create_task(
            relay(OutboundStream(_frame(), wire.send), EngineEndpoint(eng.url, {}, {}), c)
        )
        await asyncio.wait_for(wire.first_data.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(eng.client_closed.wait(), 2)
