"""Read an engine's server-sent events in batches: every event that has arrived when the relay asks.

``httpx.Response.aiter_lines`` yields one line at a time through three
generator layers (bytes, text, lines), and engines send one HTTP chunk per
event, which ``httpx`` hands over one by one even when a single network read
brought many. Relaying them one by one costs one ``data.v1`` frame, one
WebSocket write and one client write per token, so a runner that falls
behind stays behind. Here a reader task takes the response's chunks as they
come (buffered chunks need no I/O, so it takes all of them in one go) and
the relay gets everything read since it last asked, as one batch: it sends
that batch in one frame. Batching is self-regulating: a relay that keeps up
gets one event at a time (no added latency), one that falls behind gets
bigger batches and spends less per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

__all__ = ["MAX_READ_AHEAD", "line_batches"]

#: Bytes the reader takes ahead of the relay before it waits. The relay itself
#: waits for flow-control credit, so a slow client must stop the reads too.
MAX_READ_AHEAD = 64 * 1024


async def line_batches(resp: httpx.Response, *, read_ahead: int = MAX_READ_AHEAD) -> AsyncIterator[list[str]]:
    """The response's lines (without their ends), grouped by what had arrived when the caller asked.

    Line ends may be ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec allows all
    three); a ``\\r\\n`` split across two reads yields an extra empty line,
    which SSE readers skip as a blank separator anyway. Splitting at a line
    end never cuts a UTF-8 sequence, so each batch decodes on its own. Use it
    with ``contextlib.aclosing`` so the reader task stops with the caller.
    """
    chunks: list[bytes] = []
    arrived = asyncio.Event()  # chunks or the end are waiting for the caller
    room = asyncio.Event()  # the caller took what was read ahead
    room.set()
    size = 0

    async def read() -> None:
        nonlocal size
        try:
            async for chunk in resp.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                arrived.set()
                if size >= read_ahead:
                    room.clear()
                    await room.wait()
        finally:
            arrived.set()

    reader = asyncio.get_running_loop().create_task(read())
    tail = b""
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            if chunks:
                data = b"".join([tail, *chunks])
                chunks.clear()
                size = 0
                room.set()
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                tail = data[cut + 1 :]
                if cut >= 0:
                    yield _lines(data[:cut])
            if reader.done() and not chunks:
                reader.result()  # the engine's read error, if any, is the caller's
                break
        if tail:
            yield _lines(tail)
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
