"""The SSE body's end: the last chunk (``[DONE]``) goes out with the end of the body.

uvicorn writes every ASGI body message to the socket at once, so a last chunk
followed by an empty ``more_body=False`` message cost a second write per request
(docs/performance.md, "The control plane's share"). The ASGI ``send`` here is an
honest recorder of the messages; the event queue is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from outpost.control_plane.openai.relay_response import LastChunk, RelayResponse
from outpost.control_plane.tunnel.stream import EventQueue


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def _relay(chunks: list[str]) -> list[dict[str, Any]]:
    async def body() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    response = RelayResponse(body(), EventQueue[object](), media_type="text/event-stream")
    await response({"type": "http"}, _never_disconnects, send)
    return sent


async def test_the_last_chunk_carries_the_end_of_the_body() -> None:
    sent = await _relay(['data: {"x": 1}\n\n', LastChunk("data: [DONE]\n\n")])
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert sent[1] == {
        "type": "http.response.body",
        "body": b'data: {"x": 1}\n\n',
        "more_body": True,
    }
    assert sent[2] == {
        "type": "http.response.body",
        "body": b"data: [DONE]\n\n",
        "more_body": False,
    }


async def test_a_body_without_a_last_chunk_still_ends() -> None:
    # A stream cut before its end (the client's relay stopped early) still closes the body.
    sent = await _relay(['data: {"x": 1}\n\n'])
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert [m.get("more_body") for m in sent[1:]] == [True, False]
