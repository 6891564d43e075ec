"""The origin's side of a relayed request: a runner another replica holds.

:class:`RemoteLink` and :class:`RemoteStream` are a
:class:`~control_plane.tunnel.link.RunnerLink` and
:class:`~control_plane.tunnel.link.RunnerStream`, as a tunnel's own are, so routing, admission,
failover and the SSE relay treat a runner on another replica like one of
their own. What differs is underneath: opening a stream posts an ``open``
message to the holder's inbox, frames come back through this replica's
inbox, consumed data goes back as ``credit`` (the holder grants it to the
runner only then, so flow control still reaches from the client to the
engine), and ``cancel`` posts a ``reset``.

The holder admits a relayed request through its own fair queue for the
runner (``open_stream(admit=...)``, holder.py): the stream then yields
:class:`~control_plane.routing.admission.HolderAdmitted` before the
runner's first frame, or
:class:`~control_plane.routing.admission.HolderRefused` instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from outpost.control_plane.errors import ApiError
from outpost.control_plane.routing.admission import HolderAdmitted, HolderRefused
from outpost.control_plane.tunnel.link import RunnerLoad
from outpost.control_plane.tunnel.stream import EventQueue, LinkClosed, StreamEvent
from outpost.sdk.protocol import DataFrame, EndFrame, ResetFrame, ResponseStartFrame

__all__ = ["RemoteLink", "RemoteStream", "Send"]

#: (replica, kind, request key, payload) -> delivered?
Send = Callable[[str, str, str, "str | dict[str, Any]"], Awaitable[bool]]


class RemoteStream(EventQueue[StreamEvent | HolderAdmitted | HolderRefused]):
    """One request relayed to another replica, read like a tunnel ``Stream``."""

    def __init__(self, key: str, window: int, link: RemoteLink) -> None:
        super().__init__()
        self.id = key
        self.key = key
        self.window = window
        self._link = link
        self._ungranted = 0
        self.finished = False
        self.started = False

    # --- called by the inbox reader -----------------------------------------------

    def deliver(self, frame: ResponseStartFrame | DataFrame | EndFrame | ResetFrame) -> None:
        if self.finished:
            return  # a frame racing our reset or a lost replica: nobody reads it
        if isinstance(frame, ResponseStartFrame):
            self.started = True
        elif isinstance(frame, DataFrame):
            self._put(frame.data)  # a reader gets data as its text (tunnel/stream.py)
            return
        elif isinstance(frame, EndFrame | ResetFrame):
            self.finished = True
            self._link.close_stream(self)
        self._put(frame)

    def admitted(self, queue_wait_s: float) -> None:
        if not self.finished:
            self._put(HolderAdmitted(queue_wait_s))

    def refused(self, error: ApiError) -> None:
        if not self.finished:
            self.finished = True
            self._link.close_stream(self)
            self._put(HolderRefused(error))

    def link_closed(self, reason: str) -> None:
        if not self.finished:
            self.finished = True
            self._link.close_stream(self)
            self._put(LinkClosed(reason))

    # --- called by the request handler ---------------------------------------------

    async def consumed(self, nchars: int) -> None:
        """As ``Stream.consumed``: credit goes back to the holder in batches of half a window."""
        self._ungranted += nchars
        if self._ungranted >= self.window // 2 and not self.finished:
            n, self._ungranted = self._ungranted, 0
            await self._link.send("credit", self.key, {"n": n})

    async def cancel(self, reason: str = "client disconnected") -> None:
        self._link.close_stream(self)
        if not self.finished:
            self.finished = True
            await self._link.send("reset", self.key, {"reason": reason[:200]})


class RemoteLink:
    """The route to one runner through one other replica (the runner may be on several)."""

    def __init__(
        self,
        replica_id: str,
        runner_id: str,
        send: Send,
        register: Callable[[RemoteStream | None, str], None],
        stream_window: int,
    ) -> None:
        self.replica_id = replica_id
        self.runner_id = runner_id
        self.session_id = f"via:{replica_id}"
        self._send = send
        self._register = register  # the node's request-key -> stream table, for its inbox reader
        self.stream_window = stream_window
        self.streams: dict[str, RemoteStream] = {}
        self.load = RunnerLoad()
        self.draining = False
        self.closed = False
        # The holder admits requests through its fair queue for the runner (open_stream's
        # ``admit``).
        self.holder_admits = True

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    async def send(self, kind: str, key: str, payload: str | dict[str, Any]) -> bool:
        try:
            return await self._send(self.replica_id, kind, key, payload)
        except Exception:  # noqa: BLE001 - Redis down: the stream is lost, the caller sees it below
            return False

    async def open_stream(
        self,
        *,
        path: str,
        model: str,
        body: str,
        stream: bool,
        sealed: bool = False,
        window: int | None = None,
        request_id: str | None = None,
        admit: dict[str, Any] | None = None,
    ) -> RemoteStream:
        if self.closed or self.draining:
            raise ConnectionError("relay is not accepting streams")
        key = secrets.token_hex(12)
        st = RemoteStream(key, window or self.stream_window, self)
        self.streams[key] = st
        self._register(st, key)
        request = {
            "runner_id": self.runner_id,
            "path": path,
            "model": model,
            "body": body,
            "stream": stream,
            "sealed": sealed,
            "window": st.window,
            "request_id": request_id,
        }
        if admit is not None:
            request["admit"] = admit
        why = f"replica {self.replica_id} is gone"
        try:
            delivered = await self._send(self.replica_id, "open", key, request)
        except Exception as exc:  # noqa: BLE001 - any Redis failure fails this route; serving fails over
            delivered, why = False, f"relay through {self.replica_id} failed: {exc}"
        if not delivered:
            self.close_stream(st)
            raise ConnectionError(why)
        return st

    def close_stream(self, stream: Any) -> None:
        if self.streams.pop(stream.key, None) is not None:
            self._register(None, stream.key)

    def fail_all(self, reason: str) -> None:
        self.closed = True
        for st in list(self.streams.values()):
            st.link_closed(reason)
            self.close_stream(st)
