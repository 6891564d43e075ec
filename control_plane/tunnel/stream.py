"""One multiplexed request stream, as the control plane sees it.

Flow control: the runner may send at most ``window`` characters of data the
control plane has not yet granted back. The control plane grants credit back
only as the client *consumes* data, so a client that stops reading stops its
own stream on the runner and nobody else's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, Union

from outpost.sdk.protocol import DataFrame, EndFrame, FrameError, ResetFrame, ResponseStartFrame

__all__ = ["EventQueue", "LinkClosed", "Stream", "StreamEvent", "response_start_problem"]

#: What a stream's reader gets. Data is its text alone, however it came (a binary record or a
#: ``data.v1`` frame): no frame object per token (docs/performance.md).
StreamEvent = Union[ResponseStartFrame, str, EndFrame, ResetFrame, "LinkClosed"]


#: Media types a runner may answer a client with: what an OpenAI endpoint returns.
_MEDIA_TYPES = frozenset({"application/json", "text/event-stream"})
#: Statuses that must not carry a body (RFC 9110): the HTTP server would refuse to send one.
_NO_BODY = frozenset({204, 205, 304})


def response_start_problem(frame: ResponseStartFrame) -> str | None:
    """Why a runner's ``response_start`` cannot become the client's response, or ``None``.

    The contract lets a runner say any status from 100 and any content type; the client
    may only get a final status with a body (200-599 less 204/205/304) and JSON or SSE:
    a 1xx would corrupt the HTTP response, a 204 with a body raises in the server, and a
    ``text/html`` answer from ``api.example`` is a phishing page under our name.
    """
    if not 200 <= frame.status <= 599 or frame.status in _NO_BODY:
        return f"status {frame.status}"
    media = frame.content_type.split(";", 1)[0].strip().lower()
    if media not in _MEDIA_TYPES:
        return f"content type {frame.content_type[:64]!r}"
    return None


class LinkClosed:
    """Delivered to every open stream when its connection drops."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


E = TypeVar("E")


class _Wake:
    """Queued by :meth:`EventQueue.interrupt` to wake a reader that waits for an event."""


_WAKE = _Wake()


class EventQueue(Generic[E]):
    """The reading half of a stream, local (:class:`Stream`) or relayed (``cluster/remote.py``).

    One task reads it (the request's own), so it is a deque and at most one waiting future
    rather than an ``asyncio.Queue``, whose getter bookkeeping and loop lookups were a few
    per cent of the control plane's CPU per relayed event at 256 streams (docs/performance.md).
    """

    def __init__(self) -> None:
        self._events: deque[E | _Wake] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader's, while it waits
        self._held: E | _Wake | None = None  # read by take_data() ahead of its turn
        self._interrupt: BaseException | None = None

    def _put(self, event: E | _Wake) -> None:
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_event(self, timeout: float | None = None) -> E:
        """The next event; raises what :meth:`interrupt` was given once the events queued before
        it are read."""
        if self._held is not None:
            held, self._held = self._held, None
            if not isinstance(held, _Wake):
                return held
            if self._interrupt is not None:
                raise self._interrupt
        if timeout is None:
            return await self._next()
        # Not wait_for: on Python 3.11 it runs the wait in a task of its own, one more
        # turn of a busy event loop for every event before a request's first byte.
        async with asyncio.timeout(timeout):
            return await self._next()

    async def _next(self) -> E:
        while True:
            while not self._events:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:  # also when a timeout cancels the wait: what arrives stays queued
                    self._waiter = None
            ev = self._events.popleft()
            if not isinstance(ev, _Wake):
                return ev
            if self._interrupt is not None:
                raise self._interrupt
            # A wake-up left from an interrupt already withdrawn: nothing to report.

    def interrupt(self, exc: BaseException) -> None:
        """Make the reader's wait raise ``exc`` (after the events already queued), until
        :meth:`resume`.

        For ``openai/disconnect.py``: a client that leaves stops a read in the
        reading task itself, without running that read in a task of its own.
        """
        self._interrupt = exc
        self._put(_WAKE)

    def resume(self) -> None:
        self._interrupt = None

    def take_data(self) -> str:
        """The data already delivered and not read yet, joined, without waiting.

        The SSE relay writes it with the event it just read: under load the
        runner's frames queue up here, and one client write for all of them
        costs little more than one for each. Stops at the first other event,
        which :meth:`next_event` returns next.
        """
        parts: list[str] = []
        while self._held is None and self._events:
            ev = self._events.popleft()
            if isinstance(ev, str):
                parts.append(ev)
            elif isinstance(ev, _Wake):
                if self._interrupt is not None:  # next_event must still see it, in its place
                    self._held = ev
            else:
                self._held = ev
        return "".join(parts)


class Stream(EventQueue[StreamEvent]):
    def __init__(
        self,
        stream_id: int,
        window: int,
        grant: Callable[[int, int], Awaitable[None]],
        reset: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self.id = stream_id
        self.window = window
        self._credit = window  # what the runner may still send
        self._ungranted = 0  # consumed by the client, not yet granted back
        self._grant = grant
        self._reset = reset
        # The queue is bounded by the window: the runner cannot push more than it was granted.
        super().__init__()
        self.finished = False
        self.started = False

    # --- called by the connection's reader task -------------------------------

    def deliver(self, frame: ResponseStartFrame | DataFrame | EndFrame | ResetFrame) -> None:
        if self.finished:
            raise FrameError(f"frame for finished stream {self.id}")
        if isinstance(frame, ResponseStartFrame):
            if self.started:
                raise FrameError(f"second response_start on stream {self.id}")
            self.started = True
        elif isinstance(frame, DataFrame):
            self.deliver_data(frame.data)
            return
        else:
            self.finished = True
        self._put(frame)

    def deliver_data(self, text: str) -> None:
        """A data record's text (the binary path: no frame is built for it)."""
        if self.finished:
            raise FrameError(f"frame for finished stream {self.id}")
        if not self.started:
            raise FrameError(f"data before response_start on stream {self.id}")
        self._credit -= len(text)
        if self._credit < 0:
            raise FrameError(f"stream {self.id} exceeded its flow-control window")
        self._put(text)

    def link_closed(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self._put(LinkClosed(reason))

    # --- called by the request handler --------------------------------------------

    async def consumed(self, nchars: int) -> None:
        """The client took ``nchars``; grant credit back in batches of half a window."""
        self._ungranted += nchars
        if self._ungranted >= self.window // 2 and not self.finished:
            n, self._ungranted = self._ungranted, 0
            self._credit += n
            await self._grant(self.id, n)

    async def cancel(self, reason: str = "client disconnected") -> None:
        if not self.finished:
            self.finished = True
            await self._reset(self.id, reason)
