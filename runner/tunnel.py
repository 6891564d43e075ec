"""The runner's outbound tunnel: N connections, handshake, one reader per connection.

Each connection authenticates by signing the control plane's nonce, then
serves request streams concurrently. A dropped connection is re-dialled with
exponential backoff and full jitter; the backoff resets only after a
connection has stayed up, so a flapping control plane is not hammered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidProxyStatus,
    InvalidURI,
)

from outpost.runner.identity import RunnerIdentity
from outpost.runner.streams import OutboundStream, SendData
from outpost.runner.tls import ControlPlaneTransport, trust_failure
from outpost.runner.tracing import stream_span
from outpost.runner.wire import FrameWriter
from outpost.sdk.logfmt import REQUEST_ID
from outpost.sdk.protocol import (
    CAPABILITIES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSIONS,
    ChallengeFrame,
    CloseCode,
    DataFrame,
    DeployFrame,
    FrameError,
    GoawayFrame,
    HelloFrame,
    RequestFrame,
    ResetFrame,
    StatusFrame,
    UndeployFrame,
    WelcomeFrame,
    WindowUpdateFrame,
    close_reason,
    encode_frame,
    handshake_message,
    negotiate_version,
    parse_frame,
)

__all__ = ["TunnelClient", "TunnelTerminated", "tunnel_url"]

log = logging.getLogger("outpost.runner.tunnel")

StreamHandler = Callable[[OutboundStream], Awaitable[None]]
#: Told of every stream once it is over: (stream, seconds, outcome "ok" | "error" | "cancelled").
StreamObserver = Callable[[OutboundStream, float, str], None]
#: Takes a control frame the control plane sent (deploy.v1, undeploy.v1) and the
#: connection's send; it must return at once (long work runs in its own task).
ControlHandler = Callable[[object, Callable[[object], Awaitable[None]]], None]
ConnectFactory = Callable[..., Any]


class TunnelTerminated(RuntimeError):
    """The control plane refused this runner for good (revoked, bad identity)."""


def tunnel_url(control_plane: str) -> str:
    base = control_plane.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/tunnel/v1"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/tunnel/v1"
    return base + "/tunnel/v1"


class TunnelClient:
    def __init__(
        self,
        *,
        identity: RunnerIdentity,
        hello_fields: Callable[[], dict[str, Any]],
        on_stream: StreamHandler,
        status: Callable[[], StatusFrame],
        connections: int = 2,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 15.0,
        stable_after_s: float = 30.0,
        connect_factory: ConnectFactory = connect,
        observer: StreamObserver | None = None,
        transport: ControlPlaneTransport | None = None,
        capabilities: frozenset[str] | None = None,
        on_control: ControlHandler | None = None,
        on_session: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.identity = identity
        # What this runner announces: every capability of the contract but ``deployments``,
        # which only a runner with a deployment manager (runner/deployments/) may claim.
        self.capabilities = (
            capabilities
            if capabilities is not None
            else CAPABILITIES - {"deployments", "served-names"}
        )
        self._on_control = on_control
        # Called once a connection negotiated ``deployments`` (the manager re-sends its replicas).
        self._on_session = on_session
        # Connections whose control plane takes replica.v1 frames, and how to send on each.
        self._control_sends: dict[ClientConnection, Callable[[object], Awaitable[None]]] = {}
        self._session_tasks: set[asyncio.Task[None]] = set()
        self.url = tunnel_url(identity.control_plane)
        self._hello_fields = hello_fields
        self._on_stream = on_stream
        self._status = status
        self.n_connections = connections
        self._ping = (ping_interval_s, ping_timeout_s)
        self._backoff = (backoff_base_s, backoff_cap_s, stable_after_s)
        self._connect = connect_factory
        # TLS trust and the proxy (runner/tls.py); None: websockets' defaults
        # (system CAs, env proxy).
        self._transport_kwargs = (
            transport.websocket_kwargs(self.url) if transport is not None else {}
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}  # stream tasks, all connections
        self._conns: set[ClientConnection] = set()
        self.draining = False
        self.connected = asyncio.Event()
        self.connects = 0  # successful handshakes, for observability and tests
        self.completed = 0  # streams answered to the end
        self.observer = observer
        # Read by runner/observability.py at scrape time.
        self.disconnects = 0  # handshaken connections that went away
        self.frames = {"sent": 0, "received": 0}
        self.bytes = {"sent": 0, "received": 0}

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def active_streams(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        """Keep every connection up until cancelled; raise TunnelTerminated if refused for good."""
        async with asyncio.TaskGroup() as tg:
            for i in range(self.n_connections):
                tg.create_task(self._keep_connected(i))

    async def _keep_connected(self, index: int) -> None:
        base, cap, stable_after = self._backoff
        failures = 0  # consecutive dials that never completed a handshake
        while not self.draining:
            started = time.monotonic()
            code: int | None = None
            session = _Session()
            try:
                code = await self._connection(index, session)
            except TunnelTerminated:
                raise
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, FrameError) as exc:
                # A certificate or pin that does not match will not match on the next dial either.
                if (failure := trust_failure(exc)) is not None:
                    raise TunnelTerminated(str(failure)) from None
                if isinstance(exc, InvalidProxyStatus) and exc.response.status_code in (401, 407):
                    raise TunnelTerminated(
                        f"the proxy refused the runner's credentials "
                        f"({exc.response.status_code}): check OUTPOST_PROXY_AUTH and --proxy"
                    ) from None
                code = exc.rcvd.code if isinstance(exc, ConnectionClosed) and exc.rcvd else None
                log.info("tunnel %d: %s", index, exc or type(exc).__name__)
            except InvalidURI as exc:
                raise TunnelTerminated(f"bad control plane URL: {exc}") from None
            except InvalidProxy as exc:
                raise TunnelTerminated(f"bad proxy URL: {exc}") from None
            reason = close_reason(code)
            if reason.terminal:
                raise TunnelTerminated(f"control plane closed the tunnel: {reason.description}")
            # drain() sets it while the connection runs; mypy keeps the loop condition's narrowing.
            if self.draining:
                return  # type: ignore[unreachable]
            if not session.handshook:
                failures += 1
            elif time.monotonic() - started > stable_after:
                failures = 0
            else:
                # Accepted, then dropped quickly: retry soon, but not in a hot loop.
                failures = 1
            delay = random.uniform(0, min(cap, base * 2**failures))  # full jitter
            log.info("tunnel %d: reconnecting in %.2fs", index, delay)
            await asyncio.sleep(delay)

    async def _connection(self, index: int, session: _Session) -> int | None:
        ping_interval, ping_timeout = self._ping
        async with self._connect(
            self.url,
            max_size=MAX_FRAME_BYTES + 1024,
            compression=None,
            open_timeout=10,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_queue=64,
            close_timeout=5,
            **self._transport_kwargs,
        ) as ws:
            welcome = await self._handshake(ws, index)
            session.handshook = True
            # Every frame leaves through one writer, in order (runner/wire.py); with
            # binary-data, data goes as records coalesced across this connection's streams.
            writer = FrameWriter(ws.send, self._count_sent)
            send = writer.send
            binary = "binary-data" in welcome.capabilities and "binary-data" in self.capabilities
            send_data = writer.send_data if binary else None
            self._conns.add(ws)
            self.connected.set()
            self.connects += 1
            mine: dict[int, OutboundStream] = {}
            status_task = asyncio.create_task(
                self._status_loop(send, frozenset(welcome.capabilities))
            )
            if "deployments" in welcome.capabilities and "deployments" in self.capabilities:
                self._control_sends[ws] = send
                if self._on_session is not None:
                    resync = asyncio.create_task(self._on_session())
                    self._session_tasks.add(resync)
                    resync.add_done_callback(self._session_tasks.discard)
            try:
                if self.draining:
                    # drain() closed the connections it saw; this one was dialled meanwhile (a
                    # redial after a close) and has no streams: say goodbye and close it too.
                    await send(GoawayFrame(reason="runner draining"))
                    await ws.close(int(CloseCode.GOING_AWAY), "runner shutting down")
                async for raw in ws:
                    self.frames["received"] += 1
                    self.bytes["received"] += len(raw)
                    self._dispatch(parse_frame(raw), mine, send, send_data)
            except FrameError as exc:
                log.warning("tunnel %d: control plane broke the protocol: %s", index, exc)
                await ws.close(int(exc.code), str(exc)[:120])
            finally:
                status_task.cancel()
                await writer.close()
                self.disconnects += 1
                self._conns.discard(ws)
                self._control_sends.pop(ws, None)
                if not self._conns:
                    self.connected.clear()
                # Streams on a dropped connection are not resumed; stop their work.
                for out in list(mine.values()):
                    task = self._tasks.pop(_key(out), None)
                    if task:
                        task.cancel()
            code: int | None = ws.close_code
            return code

    def _count_sent(self, size: int) -> None:
        self.frames["sent"] += 1
        self.bytes["sent"] += size

    async def _handshake(self, ws: ClientConnection, index: int) -> WelcomeFrame:
        challenge = parse_frame(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(challenge, ChallengeFrame):
            raise FrameError("expected challenge.v1")
        version = negotiate_version(challenge.versions)
        if version is None:
            raise TunnelTerminated(
                f"no common protocol version (control plane: {challenge.versions}, "
                f"runner: {list(PROTOCOL_VERSIONS)})"
            )
        rid = self.identity.runner_id
        sig = self.identity.key.sign(handshake_message(challenge.nonce, rid, version))
        hello = HelloFrame(
            runner_id=rid,
            version=version,
            signature=sig,
            capabilities=sorted(self.capabilities),
            connection_index=index,
            **self._hello_fields(),
        )
        await ws.send(encode_frame(hello))
        welcome = parse_frame(await asyncio.wait_for(ws.recv(), 10))
        if not isinstance(welcome, WelcomeFrame):
            raise FrameError("expected welcome.v1")
        log.info("tunnel %d connected (session %s)", index, welcome.session_id)
        return welcome

    def _dispatch(
        self,
        frame: object,
        mine: dict[int, OutboundStream],
        send: Callable[[object], Awaitable[None]],
        send_data: SendData | None = None,
    ) -> None:
        if isinstance(frame, RequestFrame):
            if frame.stream_id in mine:
                raise FrameError(f"stream {frame.stream_id} opened twice")
            opened = OutboundStream(frame, send, send_data)
            mine[frame.stream_id] = opened
            if opened.body_complete:
                self._start(opened, mine)
        elif isinstance(frame, DataFrame):
            out = self._stream(mine, frame.stream_id)
            if out is not None:
                out.add_body(frame.data)
                if out.body_complete:
                    self._start(out, mine)
        elif isinstance(frame, WindowUpdateFrame):
            if (out := self._stream(mine, frame.stream_id)) is not None:
                out.grant(frame.increment)
        elif isinstance(frame, ResetFrame):
            out = mine.pop(frame.stream_id, None)
            if out is not None:
                out.closed = True
                task = self._tasks.pop(_key(out), None)
                if task:
                    task.cancel()
        elif isinstance(frame, GoawayFrame):
            log.info("control plane is going away: %s", frame.reason)
        elif isinstance(frame, DeployFrame | UndeployFrame):
            # Only for a runner that announced ``deployments``; a control plane that sends one
            # anyway breaks the protocol like any other frame out of place.
            if self._on_control is None or "deployments" not in self.capabilities:
                raise FrameError(f"{frame.type} without the deployments capability")
            self._on_control(frame, send)
        else:
            raise FrameError(
                f"unexpected {getattr(frame, 'type', '?')} frame from the control plane"
            )

    @staticmethod
    def _stream(mine: dict[int, OutboundStream], sid: int) -> OutboundStream | None:
        # A late frame for a stream that already ended is harmless; ids never reused.
        return mine.get(sid)

    def _start(self, out: OutboundStream, mine: dict[int, OutboundStream]) -> None:
        async def run() -> None:
            # This task's log lines carry the client request's id (sdk/logfmt.py).
            REQUEST_ID.set(out.request.request_id)
            started, outcome = time.monotonic(), "cancelled"
            try:
                with stream_span(out.request):  # runner/tracing.py: a no-op unless traces are on
                    await self._on_stream(out)
                outcome = "ok" if out.failure is None else "error"
                if (
                    out.closed
                ):  # answered in protocol, failed or not (a sealed failure stays unseen)
                    self.completed += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = "error"
                log.exception("stream %d failed", out.id)
                if not out.closed:
                    try:
                        await out.end(error=f"runner error: {type(exc).__name__}")
                    except Exception as end_exc:  # noqa: BLE001 - the tunnel may be gone with it
                        log.debug("stream %d: error end not sent: %s", out.id, end_exc)
            finally:
                mine.pop(out.id, None)
                self._tasks.pop(_key(out), None)
                seconds = time.monotonic() - started
                if out.failure is not None:
                    log.error(
                        "stream %d %s %s: error in %.0f ms: %s",
                        out.id,
                        out.request.path,
                        out.request.model,
                        seconds * 1000,
                        out.failure,
                    )
                else:
                    log.info(
                        "stream %d %s %s: %s in %.0f ms",
                        out.id,
                        out.request.path,
                        out.request.model,
                        outcome,
                        seconds * 1000,
                    )
                if self.observer is not None:
                    self.observer(out, seconds, outcome)

        self._tasks[_key(out)] = asyncio.create_task(run())

    async def _status_loop(
        self, send: Callable[[object], Awaitable[None]], caps: frozenset[str]
    ) -> None:
        while True:
            frame = self._status()
            if frame.unavailable_models and "model-status" not in caps:
                # A control plane without per-model status would refuse the field;
                # it learns of a down engine from that engine's 503s instead.
                frame = frame.model_copy(update={"unavailable_models": []})
            if frame.headroom and "headroom" not in caps:
                frame = frame.model_copy(update={"headroom": 0})  # it admits up to capacity only
            if frame.engines and "engine-slots" not in caps:
                frame = frame.model_copy(
                    update={"engines": []}
                )  # it admits up to the summed capacity
            try:
                await send(frame)
            except ConnectionClosed:
                return
            await asyncio.sleep(2.0)

    async def send_control(self, frame: object) -> bool:
        """Send a frame of the ``deployments`` capability on any connection that negotiated it;
        False when none is open (the manager re-sends its state on the next one)."""
        for send in list(self._control_sends.values()):
            try:
                await send(frame)
                return True
            except ConnectionClosed:
                continue
        return False

    async def drain(self, grace_s: float) -> None:
        """Stop taking streams, let live ones finish within ``grace_s``, then close."""
        self.draining = True
        for ws in list(self._conns):
            try:
                await ws.send(
                    encode_frame(GoawayFrame(reason="runner shutting down", drain_s=grace_s))
                )
            except ConnectionClosed:
                pass
        tasks = list(self._tasks.values())
        if tasks:
            log.info("draining %d live stream(s) for up to %.0fs", len(tasks), grace_s)
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for t in pending:
                t.cancel()
        for ws in list(self._conns):
            await ws.close(int(CloseCode.GOING_AWAY), "runner shutting down")


class _Session:
    """What one dial achieved, for the backoff decision."""

    handshook = False


def _key(out: OutboundStream) -> int:
    # Stream ids are per connection; the object's identity is unique across them.
    return id(out)
