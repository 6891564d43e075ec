"""The streamed (SSE) response of a relayed request, written from the request's own task.

Starlette's ``StreamingResponse``, under ASGI spec 2.3 (what uvicorn's
httptools server speaks), runs the body in a second task of an anyio task
group and listens for the client's disconnect in the first. That costs a
task group per request and one more turn of the event loop before the first
byte: 0.4 ms at the median with 64 streams on two cores, a tenth of what
the control plane added to the first token (docs/performance.md).

:class:`RelayResponse` writes the body from the request's task and watches
the disconnect the way serving.py does before the first byte
(:func:`~control_plane.openai.disconnect.interrupt_when_gone`): the relay's
next wait on the stream raises :class:`~control_plane.openai.disconnect.ClientGone`,
its ``finally`` resets the runner's stream, and the response ends there,
as it ended when the task group was cancelled. The background task runs
after the body either way, as Starlette's does.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from outpost.control_plane.openai.disconnect import (
    ClientGone,
    Interruptible,
    client_gone,
    interrupt_when_gone,
)

__all__ = ["LastChunk", "RelayResponse"]


class LastChunk(str):
    """The body's last chunk (``[DONE]`` or an error event and ``[DONE]``): it goes out with the
    end of the chunked body, in one socket write instead of two. A write on loopback costs the
    control plane more than the rest of a short request's relay (docs/performance.md)."""

    __slots__ = ()


class RelayResponse(StreamingResponse):
    def __init__(self, content: Any, events: Interruptible, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.events = events  # what the body iterator waits on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            more = True
            with interrupt_when_gone(partial(client_gone, receive), self.events):
                async for chunk in self.body_iterator:
                    more = not isinstance(chunk, LastChunk)
                    if not isinstance(chunk, bytes | memoryview):
                        chunk = chunk.encode(self.charset)
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientGone:
            pass  # nobody to answer; the body iterator has stopped the runner's stream
        if self.background is not None:
            await self.background()
