"""Read an engine's server-sent events in the batches the network delivers them.

``httpx.Response.aiter_lines`` yields one line at a time through three
generator layers (bytes, text, lines); on the relay's hot path that cost is
paid per token. Reading bytes and splitting every complete line of a read at
once is cheaper, and it tells the relay which events arrived *together*, so
it can send them to the control plane in one ``data.v1`` frame (one
WebSocket message and one client write instead of one per event). Under
load that batching is self-regulating: the further the runner falls behind,
the more events each read holds and the less it spends per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

__all__ = ["line_batches"]


async def line_batches(resp: httpx.Response) -> AsyncIterator[list[str]]:
    """The response's lines (without their ends), grouped by the read that completed them.

    Line ends may be ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec allows all
    three); a ``\\r\\n`` split across two reads yields an extra empty line,
    which SSE readers skip as a blank separator anyway. Splitting at a line
    end never cuts a UTF-8 sequence, so each batch decodes on its own.
    """
    tail = b""
    async for chunk in resp.aiter_bytes():
        data = tail + chunk if tail else chunk
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        if cut < 0:
            tail = data
            continue
        tail = data[cut + 1 :]
        yield _lines(data[:cut])
    if tail:
        yield _lines(tail)


def _lines(raw: bytes) -> list[str]:
    text = raw.decode("utf-8", errors="replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")
