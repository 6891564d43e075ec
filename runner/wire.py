"""The one writer of a tunnel connection: frames in order, ready data coalesced.

Every frame a connection sends goes through its :class:`FrameWriter`, in the
order it was given. When the control plane announced ``binary-data``, the
data pieces that are ready together — from any number of streams — leave as
one binary message (``sdk.protocol.encode_data_batch``) instead of one JSON
``data.v1`` frame and one WebSocket write each: at 256 streams the runner's
profile was a third WebSocket writes (issue 24, docs/performance.md).

The writer runs in a task of its own and takes everything queued each time
it runs, after letting the other ready tasks of the loop turn add theirs;
so a relay that keeps up sends each event at once, and one that falls behind
sends more per write. A sender waits only while more than ``limit`` bytes
are queued (the stream windows bound it anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

from websockets.exceptions import ConnectionClosed

from outpost.sdk.protocol import MAX_FRAME_BYTES, encode_data_batch, encode_frame

__all__ = ["FrameWriter"]

#: Bytes queued before senders wait for the writer.
MAX_QUEUED = 1024 * 1024
#: A record's header: stream id and length (sdk/protocol.py).
_RECORD_HEADER = len(encode_data_batch([(1, b"")])) - 1

_Item = str | tuple[int, bytes]


class FrameWriter:
    def __init__(
        self,
        send: Callable[[str | bytes], Awaitable[None]],
        sent: Callable[[int], None] | None = None,
        limit: int = MAX_QUEUED,
    ) -> None:
        self._ws_send = send
        self._sent = sent  # told the size of every message written, for the tunnel's counters
        self._limit = limit
        self._pending: list[_Item] = []
        self._queued = 0  # bytes in _pending and in the write under way
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._failed: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def send(self, frame: object) -> None:
        """Queue one JSON frame."""
        # Callers pass any frame (``object``, as the link protocol does); encode_frame refuses
        # a non-frame.
        text = encode_frame(frame)  # type: ignore[arg-type]
        await self._put(text, len(text))

    async def send_data(self, stream_id: int, payload: bytes) -> None:
        """Queue one data record (only when both ends announced ``binary-data``)."""
        await self._put((stream_id, payload), len(payload) + _RECORD_HEADER)

    async def _put(self, item: _Item, size: int) -> None:
        if self._failed is not None:
            if isinstance(self._failed, ConnectionClosed):
                raise self._failed
            raise ConnectionError(f"tunnel writer stopped: {self._failed!r}")
        self._pending.append(item)
        self._queued += size
        self._wake.set()
        if self._queued > self._limit:
            self._room.clear()
            await self._room.wait()

    async def close(self) -> None:
        self._task.cancel()
        # asyncio.wait, not ``await self._task`` under suppress(CancelledError): that would also
        # swallow a cancellation of the caller itself, and TunnelClient.run() cancelled while a
        # connection closed went on redialling.
        await asyncio.wait({self._task})
        if not self._task.cancelled():
            self._task.exception()  # retrieved: it is reported through self._failed
        if self._failed is None:
            self._failed = ConnectionError("tunnel connection closed")
        self._room.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                # Let the tasks this loop turn woke queue theirs: they leave in the same write.
                await asyncio.sleep(0)
                self._wake.clear()
                items, self._pending = self._pending, []
                for message in _messages(items):
                    await self._ws_send(message)
                    if self._sent is not None:
                        self._sent(len(message))
                self._queued = sum(_size(i) for i in self._pending)
                if self._queued <= self._limit:
                    self._room.set()
        except BaseException as exc:
            self._failed = exc
            self._room.set()  # senders waiting for room get the error
            raise


def _size(item: _Item) -> int:
    return len(item) if isinstance(item, str) else len(item[1]) + _RECORD_HEADER


def _messages(items: list[_Item]) -> Iterator[str | bytes]:
    """Frames as given; each run of data records as binary messages of at most MAX_FRAME_BYTES."""
    batch: list[tuple[int, bytes]] = []
    size = 1
    for item in items:
        if isinstance(item, str):
            if batch:
                yield encode_data_batch(batch)
                batch, size = [], 1
            yield item
            continue
        n = _RECORD_HEADER + len(item[1])
        if batch and size + n > MAX_FRAME_BYTES:
            yield encode_data_batch(batch)
            batch, size = [], 1
        batch.append(item)
        size += n
    if batch:
        yield encode_data_batch(batch)
