"""The runner's connection writer (runner/wire.py), at its injected seam: the WebSocket send.

The send here is an honest fake of ``ClientConnection.send`` — it records each message, and
can be held (a slow socket) or fail (a dropped connection) — so order, coalescing, the size
cap, back-pressure and the failure path are checked exactly.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from outpost.runner.wire import FrameWriter
from outpost.sdk.protocol import (
    MAX_DATA_BYTES,
    MAX_FRAME_BYTES,
    EndFrame,
    ResponseStartFrame,
    parse_data_batch,
    parse_frame,
)


class FakeSocket:
    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    async def send(self, message: str | bytes) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.messages.append(message)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_keep_their_order_and_ready_records_share_a_message() -> None:
    ws = FakeSocket()
    writer = FrameWriter(ws.send)
    await writer.send(ResponseStartFrame(stream_id=1, status=200))
    await writer.send(ResponseStartFrame(stream_id=2, status=200))
    await writer.send_data(1, "héllo".encode())
    await writer.send_data(2, b"world")
    await writer.send(EndFrame(stream_id=1))
    await writer.send_data(2, b"!")
    await _settle()
    kinds = [
        parse_frame(m).type if isinstance(m, str) else parse_data_batch(m) for m in ws.messages
    ]
    assert kinds == [
        "response_start.v1",
        "response_start.v1",
        [(1, "héllo"), (2, "world")],
        "end.v1",
        [(2, "!")],
    ]
    await writer.close()


async def test_a_batch_never_exceeds_the_frame_cap() -> None:
    ws = FakeSocket()
    writer = FrameWriter(ws.send)
    payload = b"x" * MAX_DATA_BYTES
    for sid in range(1, 11):
        await writer.send_data(sid, payload)
    await _settle()
    assert all(len(m) <= MAX_FRAME_BYTES for m in ws.messages)
    got = [rec for m in ws.messages for rec in parse_data_batch(m)]  # type: ignore[arg-type]
    assert [sid for sid, _ in got] == list(range(1, 11))
    assert len(ws.messages) == 4  # three 16 KiB records and their headers fit in 64 KiB
    await writer.close()


async def test_senders_wait_while_too_much_is_queued() -> None:
    ws = FakeSocket()
    ws.gate.clear()  # the socket does not drain
    writer = FrameWriter(ws.send, limit=4 * 1024)
    await writer.send_data(1, b"a" * 3000)  # under the limit: returns at once
    blocked = asyncio.create_task(writer.send_data(1, b"b" * 3000))
    await _settle()
    assert not blocked.done()
    ws.gate.set()
    await asyncio.wait_for(blocked, 5)
    await _settle()
    assert b"".join(p.encode() for m in ws.messages for _, p in parse_data_batch(m)) == (  # type: ignore[arg-type]
        b"a" * 3000 + b"b" * 3000
    )
    await writer.close()


async def test_a_dropped_connection_fails_later_sends() -> None:
    ws = FakeSocket()
    ws.fail = ConnectionClosedError(None, Close(1006, ""), None)
    writer = FrameWriter(ws.send)
    await writer.send_data(1, b"lost")
    await _settle()
    with pytest.raises(ConnectionClosedError):
        await writer.send(EndFrame(stream_id=1))
    await writer.close()
    with pytest.raises(ConnectionClosedError):
        await writer.send_data(1, b"after close")


async def test_a_caller_cancelled_while_closing_stays_cancelled() -> None:
    # TunnelClient.run() cancelled while its connection closed went on redialling when close()
    # swallowed the caller's own CancelledError along with the writer task's.
    ws = FakeSocket()
    ws.gate.clear()  # the writer is stuck in a send: a slow socket
    writer = FrameWriter(ws.send)
    await writer.send(ResponseStartFrame(stream_id=1, status=200))
    await _settle()
    closing = asyncio.create_task(writer.close())
    await asyncio.sleep(0)  # close() now waits for the writer task
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
