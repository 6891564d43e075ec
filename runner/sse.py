"""Read an engine's server-sent events in batches: every event that has arrived when the relay asks.

Engines send one HTTP chunk per event. Relaying them one by one costs one
``data.v1`` frame, one WebSocket write and one client write per token, so a
runner that falls behind stays behind. The engine client hands over the body
as *batches* — everything that had arrived when the relay asked
(``runner.engine_client``: ``aiohttp``'s ``readany`` does this itself; for an
``httpx`` body, :func:`read_ahead` groups its one-chunk-at-a-time iterator
with a reader task) — and :func:`line_batches` turns each batch into the
lines it completed, so the relay sends one frame per batch. Batching is
self-regulating: a relay that keeps up gets one event at a time (no added
latency), one that falls behind gets bigger batches and spends less per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["MAX_READ_AHEAD", "line_batches", "read_ahead"]

#: Bytes the reader takes ahead of the relay before it waits. The relay itself
#: waits for flow-control credit, so a slow client must stop the reads too.
MAX_READ_AHEAD = 64 * 1024


async def line_batches(
    batches: AsyncGenerator[bytes, None],
) -> AsyncGenerator[list[str], None]:
    """The lines (without their ends) completed by each batch of body bytes.

    Line ends may be ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec allows all
    three); a ``\\r\\n`` split across two reads yields an extra empty line,
    which SSE readers skip as a blank separator anyway. Splitting at a line
    end never cuts a UTF-8 sequence, so each batch decodes on its own; a last
    line without an end is yielded at the end of the body.
    """
    tail = b""
    async for batch in batches:
        data = tail + batch if tail else batch
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        tail = data[cut + 1 :]
        if cut >= 0:
            yield _lines(data[:cut])
    if tail:
        yield _lines(tail)


async def read_ahead(
    chunks: AsyncIterator[bytes], limit: int = MAX_READ_AHEAD
) -> AsyncGenerator[bytes, None]:
    """Chunks regrouped as everything a reader task had taken when the caller asked.

    The task takes chunks as they come (buffered ones need no I/O, so it takes
    all of them in one go) and waits once ``limit`` bytes are waiting; a read
    error reaches the caller after the bytes before it. Use it with
    ``contextlib.aclosing`` so the reader task stops with the caller.
    """
    taken: list[bytes] = []
    arrived = asyncio.Event()  # chunks or the end are waiting for the caller
    room = asyncio.Event()  # the caller took what was read ahead
    room.set()
    size = 0

    async def read() -> None:
        nonlocal size
        try:
            async for chunk in chunks:
                taken.append(chunk)
                size += len(chunk)
                arrived.set()
                if size >= limit:
                    room.clear()
                    await room.wait()
        finally:
            arrived.set()

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            if taken:
                data = b"".join(taken)
                taken.clear()
                size = 0
                room.set()
                yield data
            if reader.done() and not taken:
                reader.result()  # the engine's read error, if any, is the caller's
                break
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _lines(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")
