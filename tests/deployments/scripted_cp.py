"""A scripted control plane: an honest fake at the tunnel seam, for the runner's deployments.

It speaks the real protocol (``sdk.protocol`` frames over a real WebSocket), checks the runner's
Ed25519 signature on the challenge like the real one, and answers with a welcome that echoes the
capabilities both sides have. After that a test drives it: send deploy/undeploy/request frames
(or raw text the parser would refuse), and wait for the frames the runner sends back. The real
control plane's side of deployments (placement, API, routing) is tested in the other files here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from outpost.sdk.identity import verify_signature
from outpost.sdk.protocol import (
    CAPABILITIES,
    PROTOCOL_VERSIONS,
    ChallengeFrame,
    DataFrame,
    EndFrame,
    HelloFrame,
    RequestFrame,
    ResponseStartFrame,
    WelcomeFrame,
    encode_frame,
    handshake_message,
    parse_frame,
)

__all__ = ["ScriptedControlPlane"]


class ScriptedControlPlane:
    def __init__(self, public_key: str, capabilities: frozenset[str] | None = None) -> None:
        self.public_key = public_key
        # Data as JSON frames: binary batches (capability binary-data) are not read here.
        self.capabilities = (capabilities if capabilities is not None else CAPABILITIES) - {
            "binary-data"
        }
        self.frames: list[object] = []  # every frame the runner sent after its hello
        self.hellos: list[HelloFrame] = []
        self.closes: list[int | None] = []  # close codes of connections that ended
        self._cond = threading.Condition()
        self._ws: ServerConnection | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stream_id = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedControlPlane:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, max_size=2**20) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        nonce = secrets.token_urlsafe(32)
        await ws.send(encode_frame(ChallengeFrame(nonce=nonce, versions=list(PROTOCOL_VERSIONS))))
        hello = parse_frame(await ws.recv())
        assert isinstance(hello, HelloFrame)
        message = handshake_message(nonce, hello.runner_id, hello.version)
        if not verify_signature(self.public_key, message, hello.signature):
            await ws.close(4001, "bad signature")
            return
        caps = sorted(self.capabilities & set(hello.capabilities))
        await ws.send(
            encode_frame(WelcomeFrame(version=hello.version, capabilities=caps, session_id="s"))
        )
        with self._cond:
            self.hellos.append(hello)
            self._ws = ws
            self._cond.notify_all()
        try:
            async for raw in ws:
                frame = parse_frame(raw)
                with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self.closes.append(ws.close_code)
                if self._ws is ws:
                    self._ws = None
                self._cond.notify_all()

    # --- driving it from a test -----------------------------------------------------

    def wait_connected(self, timeout: float = 180, count: int = 1) -> HelloFrame:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._ws is not None and len(self.hellos) >= count, timeout
            )
        assert ok, "the runner never connected"
        return self.hellos[-1]

    def send(self, frame: object | str) -> None:
        text = frame if isinstance(frame, str) else encode_frame(frame)  # type: ignore[arg-type]
        ws = self._ws
        assert ws is not None, "no runner connected"
        asyncio.run_coroutine_threadsafe(ws.send(text), self._loop).result(10)

    def wait_for(
        self, predicate: Callable[[Any], bool], timeout: float, what: str, since: int = 0
    ) -> Any:
        """The first frame from the ``since``-th on matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for frame in self.frames[since:]:
                    if predicate(frame):
                        return frame
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} within {timeout}s; got {self.frames[-5:]}")
                self._cond.wait(left)

    def replica(self, replica_id: str, state: str, timeout: float = 300) -> Any:
        return self.wait_for(
            lambda f: (
                getattr(f, "type", "") == "replica.v1"
                and f.replica_id == replica_id
                and f.state == state
            ),
            timeout,
            f"replica {replica_id} {state}",
        )

    def replica_frames(self, replica_id: str) -> list[Any]:
        with self._cond:
            return [
                f
                for f in self.frames
                if getattr(f, "type", "") == "replica.v1" and f.replica_id == replica_id
            ]

    def request(self, model: str, body: dict[str, Any], timeout: float = 240) -> tuple[int, str]:
        """One non-streamed request through the tunnel: (status, body) as the runner answered."""
        self._stream_id += 1
        sid = self._stream_id
        text = json.dumps(body)
        self.send(
            RequestFrame(
                stream_id=sid,
                path="/v1/chat/completions",
                model=model,
                body=text,
                body_length=len(text),
            )
        )
        start = self.wait_for(
            lambda f: isinstance(f, ResponseStartFrame) and f.stream_id == sid, timeout, "start"
        )
        self.wait_for(lambda f: isinstance(f, EndFrame) and f.stream_id == sid, timeout, "end")
        with self._cond:
            data = "".join(
                f.data for f in self.frames if isinstance(f, DataFrame) and f.stream_id == sid
            )
        return start.status, data
