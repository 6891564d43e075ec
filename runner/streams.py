"""The runner's side of one tunnel stream: body assembly and credit-limited sending."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from outpost.sdk.protocol import (
    MAX_DATA_BYTES,
    DataFrame,
    EndFrame,
    FrameError,
    RequestFrame,
    ResponseStartFrame,
    Usage,
)

__all__ = ["OutboundStream"]

Send = Callable[[object], Awaitable[None]]
#: Queues one piece of data as a binary record (capability ``binary-data``, runner/wire.py).
SendData = Callable[[int, bytes], Awaitable[None]]


class OutboundStream:
    """Sends a response for one request, never exceeding the granted window."""

    def __init__(
        self, request: RequestFrame, send: Send, send_data: SendData | None = None
    ) -> None:
        self.request = request
        self.id = request.stream_id
        self._send = send
        # None: the peer has no ``binary-data``; data goes out as ``data.v1`` frames.
        self._send_data = send_data
        self._parts = [request.body]
        self._received = len(request.body)
        self._credit = request.window
        self._credit_changed = asyncio.Event()
        self.closed = False
        #: ``response_start.v1`` went out: a second one would break the protocol, so a
        #: failure after it can only end the stream with an error.
        self.started = False
        #: Why the stream failed though it was answered in protocol (an engine that died
        #: mid-stream): the tunnel logs it as an error, not ``ok``.
        self.failure: str | None = None

    # --- request body ---------------------------------------------------------

    @property
    def body_complete(self) -> bool:
        return self._received >= self.request.body_length

    def add_body(self, data: str) -> None:
        if self.body_complete:
            raise FrameError(f"body data after the declared length on stream {self.id}")
        self._parts.append(data)
        self._received += len(data)
        if self._received > self.request.body_length:
            raise FrameError(f"body longer than declared on stream {self.id}")

    @property
    def body(self) -> str:
        return "".join(self._parts)

    # --- flow control ----------------------------------------------------------

    def grant(self, n: int) -> None:
        self._credit += n
        self._credit_changed.set()

    @property
    def credit(self) -> int:
        return self._credit

    # --- response ------------------------------------------------------------------

    async def start(self, status: int, content_type: str) -> None:
        self.started = True
        await self._send(
            ResponseStartFrame(stream_id=self.id, status=status, content_type=content_type[:128])
        )

    async def data(self, text: str) -> None:
        for i in range(0, len(text), MAX_DATA_BYTES):
            piece = text[i : i + MAX_DATA_BYTES]
            if self._send_data is None:
                await self._take_credit(len(piece))
                await self._send(DataFrame(stream_id=self.id, data=piece))
                continue
            raw = piece.encode()
            if len(raw) <= MAX_DATA_BYTES:  # always, for ASCII
                await self._take_credit(len(piece))
                await self._send_data(self.id, raw)
                continue
            # A record holds MAX_DATA_BYTES bytes; a quarter as many characters always fit.
            step = MAX_DATA_BYTES // 4
            for j in range(0, len(piece), step):
                part = piece[j : j + step]
                await self._take_credit(len(part))
                await self._send_data(self.id, part.encode())

    async def _take_credit(self, chars: int) -> None:
        # The window counts characters in both frame forms, as the control plane counts them.
        while self._credit < chars:
            # A slow client: wait for the control plane to grant more.
            self._credit_changed.clear()
            await self._credit_changed.wait()
        self._credit -= chars

    async def end(
        self, usage: Usage | None = None, error: str | None = None, receipt: str | None = None
    ) -> None:
        if not self.closed:
            self.closed = True
            await self._send(EndFrame(stream_id=self.id, usage=usage, error=error, receipt=receipt))
