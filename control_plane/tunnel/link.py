"""One authenticated WebSocket connection from a runner, carrying many streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from outpost.control_plane.tunnel.stream import Stream, StreamEvent
from outpost.sdk.otel import TRACEPARENT
from outpost.sdk.protocol import (
    DEFAULT_STREAM_WINDOW,
    MAX_DATA_BYTES,
    DataFrame,
    EndFrame,
    EngineSlots,
    Frame,
    FrameError,
    GoawayFrame,
    ReplicaFrame,
    RequestFrame,
    ResetFrame,
    ResponseStartFrame,
    StatusFrame,
    WindowUpdateFrame,
    encode_frame,
)

if (
    TYPE_CHECKING
):  # the holder's admission events (routing/admission.py imports the hub, which imports this)
    from outpost.control_plane.routing.admission import HolderAdmitted, HolderRefused

__all__ = ["Link", "RunnerLink", "RunnerLoad", "RunnerStream"]

# A tuple, not ``A | B | …``: the union would be built again for every frame of every stream.
_STREAM_FRAMES = (ResponseStartFrame, DataFrame, EndFrame, ResetFrame)

SendText = Callable[[str], Awaitable[None]]


@dataclass
class RunnerLoad:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    healthy: bool = True
    completed: int = 0
    # Models whose engine the runner reports down (status.v1 unavailable_models).
    unavailable_models: tuple[str, ...] = ()
    # Engine slots beyond capacity for tenants with nothing in flight (status.v1 headroom).
    headroom: int = 0
    # A multi-engine runner's per-engine models and slots (status.v1 engines).
    engines: tuple[EngineSlots, ...] = ()
    updated_at: float = field(default_factory=time.monotonic)


class RunnerStream(Protocol):
    """One request's stream as the request path reads it: a tunnel :class:`Stream`, or a
    ``RemoteStream`` relayed through the replica that holds the runner (cluster/remote.py)."""

    finished: bool

    async def next_event(
        self, timeout: float | None = None
    ) -> StreamEvent | HolderAdmitted | HolderRefused: ...
    def take_data(self) -> str: ...
    async def consumed(self, nchars: int) -> None: ...
    async def cancel(self, reason: str = "client disconnected") -> None: ...
    # A client's disconnect wakes the reader (openai/disconnect.py).
    def interrupt(self, exc: BaseException) -> None: ...
    def resume(self) -> None: ...


class RunnerLink(Protocol):
    """A route to a runner: its own tunnel (:class:`Link`) or another replica's (``RemoteLink``)."""

    runner_id: str
    session_id: str
    closed: bool
    draining: bool
    load: RunnerLoad
    # True when the replica at the other end admits the request through its own fair queue
    # for the runner (``open_stream(admit=...)``, cluster/holder.py); a local link never does.
    holder_admits: bool

    @property
    def open_streams(self) -> int: ...

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
    ) -> RunnerStream: ...

    def close_stream(self, stream: Any) -> None: ...
    def fail_all(self, reason: str) -> None: ...


class Link:
    def __init__(
        self,
        runner_id: str,
        session_id: str,
        send_text: SendText,
        max_streams: int,
        close: Callable[[int, str], Awaitable[None]],
        stream_window: int = DEFAULT_STREAM_WINDOW,
        capabilities: frozenset[str] = frozenset(),
        connection_index: int = 0,
    ) -> None:
        self.stream_window = stream_window
        self.connection_index = connection_index  # the hello's: one live link per index and runner
        self.capabilities = capabilities  # negotiated in the handshake
        self.runner_id = runner_id
        self.close = close
        self.session_id = session_id
        self._send_text = send_text
        # websockets/uvicorn must not interleave two sends; one lock orders them.
        self._send_lock = asyncio.Lock()
        self._next_id = 1
        self.streams: dict[int, Stream] = {}
        self.max_streams = max_streams
        self.load = RunnerLoad()
        self.draining = False
        self.closed = False
        self.holder_admits = False  # this replica holds the tunnel: admission is local
        # Deployment replica reports (control_plane/deployments); None: refused as unexpected.
        self.on_replica: Callable[[str, ReplicaFrame], None] | None = None

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    async def send(self, frame: object) -> None:
        if self.closed:
            raise ConnectionError("link closed")
        # The RunnerLink protocol sends any frame (``object``); encode_frame refuses a non-frame.
        text = encode_frame(frame)  # type: ignore[arg-type]
        async with self._send_lock:
            try:
                await self._send_text(text)
            except (RuntimeError, OSError) as exc:
                # The socket closed before this link heard of it (a partition: the keepalive
                # sent the close, the reader has not yet marked the link). The ASGI server says
                # so with a RuntimeError ("after sending 'websocket.close'"); to the request
                # path it is a closed link, and it fails over instead of answering a 500.
                raise ConnectionError(f"link closed: {exc}") from None

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
    ) -> Stream:
        # ``admit`` is for a holder's queue (RunnerLink); this replica admitted the request already.
        if self.closed or self.draining:
            raise ConnectionError("link is not accepting streams")
        if len(self.streams) >= self.max_streams:
            raise ConnectionError("link stream limit reached")
        window = window or self.stream_window
        sid, self._next_id = self._next_id, self._next_id + 1
        st = Stream(sid, window, self._grant, self._reset)
        self.streams[sid] = st
        first, rest = body[:MAX_DATA_BYTES], body[MAX_DATA_BYTES:]
        try:
            await self.send(
                RequestFrame(
                    stream_id=sid,
                    path=path,
                    model=model,
                    body=first,
                    body_length=len(body),
                    stream=stream,
                    window=window,
                    sealed=sealed,
                    request_id=request_id if "request-id" in self.capabilities else None,
                    # The request path's dispatch span, when traces are on (sdk/otel.py).
                    traceparent=TRACEPARENT.get() if "traceparent" in self.capabilities else None,
                )
            )
            for i in range(0, len(rest), MAX_DATA_BYTES):
                await self.send(DataFrame(stream_id=sid, data=rest[i : i + MAX_DATA_BYTES]))
        except BaseException:
            self.streams.pop(sid, None)
            raise
        return st

    def close_stream(self, stream: Any) -> None:
        self.streams.pop(stream.id, None)

    async def _grant(self, sid: int, n: int) -> None:
        if sid in self.streams and not self.closed:
            await self.send(WindowUpdateFrame(stream_id=sid, increment=n))

    async def _reset(self, sid: int, reason: str) -> None:
        self.streams.pop(sid, None)
        if not self.closed:
            try:
                await self.send(ResetFrame(stream_id=sid, reason=reason))
            except ConnectionError:
                pass

    def dispatch(self, frame: Frame) -> None:
        """Route one frame from the reader task. Raises FrameError on a violation."""
        if isinstance(frame, _STREAM_FRAMES):
            st = self._open_stream_for(frame.stream_id)
            if st is None:
                return
            st.deliver(frame)
            if st.finished:
                self.streams.pop(frame.stream_id, None)
        elif isinstance(frame, StatusFrame):
            self.load = RunnerLoad(
                frame.running,
                frame.waiting,
                frame.kv_cache_usage,
                frame.healthy,
                completed=frame.completed,
                unavailable_models=tuple(frame.unavailable_models),
                headroom=frame.headroom,
                engines=tuple(frame.engines),
            )
        elif isinstance(frame, GoawayFrame):
            self.draining = True
        elif (
            isinstance(frame, ReplicaFrame)
            and "deployments" in self.capabilities
            and self.on_replica is not None
        ):
            self.on_replica(self.runner_id, frame)
        else:
            raise FrameError(f"unexpected {frame.type} frame after handshake")

    def dispatch_data(self, stream_id: int, text: str) -> None:
        """One binary data record: :meth:`dispatch` of its ``data.v1`` frame, without the frame."""
        if (st := self._open_stream_for(stream_id)) is not None:
            st.deliver_data(text)  # data never ends a stream: nothing to pop

    def _open_stream_for(self, stream_id: int) -> Stream | None:
        """The open stream a runner's frame names; ``None`` for a late frame of a stream already
        ended or reset (harmless); FrameError for one this link never opened."""
        st = self.streams.get(stream_id)
        if st is None and stream_id >= self._next_id:
            raise FrameError(f"frame for unknown stream {stream_id}")
        return st

    def fail_all(self, reason: str) -> None:
        self.closed = True
        for st in list(self.streams.values()):
            st.link_closed(reason)
        self.streams.clear()
