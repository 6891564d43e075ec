"""A rogue runner for security tests: enrolled and signing like a real one, then saying whatever a
test scripts.

It speaks the real tunnel protocol through a real WebSocket to a real control plane
(``harness.processes.ControlPlaneProcess``); frames may be raw JSON strings, so a test can send
what ``sdk.protocol`` would refuse to build (``10**400``, ``NaN``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.processes import ControlPlaneProcess
from outpost.sdk import protocol
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    ChallengeFrame,
    CloseCode,
    RequestFrame,
    encode_frame,
    handshake_message,
    parse_frame,
)

Reply = Callable[[RequestFrame], Sequence[object]]


class RogueRunner:
    """A runner of ``tenant``, enrolled by that tenant's admin, serving ``model``."""

    def __init__(self, cp: ControlPlaneProcess, tenant: str, model: str) -> None:
        self.cp, self.model = cp, model
        admin = cp.cli(
            "keys", "create", f"admin-{secrets.token_hex(3)}", "--tenant", tenant, "--admin"
        ).splitlines()[-1]
        token = httpx.post(
            f"{cp.url}/api/runners/enroll",
            json={"name": f"rogue-{secrets.token_hex(3)}"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        ).json()["token"]
        self.key = IdentityKey.generate()
        registered = httpx.post(
            f"{cp.url}/api/runners/register",
            timeout=10,
            json={"identity_public_key": self.key.public_b64},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert registered.status_code == 201, registered.text
        self.runner_id: str = registered.json()["runner_id"]

    def hello(self, nonce: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": "hello.v1",
            "runner_id": self.runner_id,
            "version": 1,
            "capacity": 4,
            "signature": self.key.sign(handshake_message(nonce, self.runner_id, 1)),
            "models": [{"name": self.model, "engine": "fake"}],
            "capabilities": sorted(protocol.CAPABILITIES),
            **fields,
        }

    def dial(self, **hello_fields: Any) -> tuple[ClientConnection, str]:
        """Connect and send a hello with ``hello_fields``; return the socket and the reply (raw)."""
        ws = connect(
            self.cp.url.replace("http://", "ws://") + "/tunnel/v1",
            max_size=None,
            compression=None,
            open_timeout=10,
            legacy=True,
        )
        challenge = parse_frame(ws.recv(timeout=10))
        assert isinstance(challenge, ChallengeFrame)
        ws.send(json.dumps(self.hello(challenge.nonce, **hello_fields)))
        try:
            return ws, str(ws.recv(timeout=10))
        except ConnectionClosed:
            return ws, ""

    def connect(self, **hello_fields: Any) -> ClientConnection:
        """A welcomed connection. Refused as a duplicate, it retries, as a runner does: the control
        plane may not have seen the previous connection with that index go yet."""
        for _ in range(50):
            ws, reply = self.dial(**hello_fields)
            if reply:
                assert json.loads(reply)["type"] == "welcome.v1", reply
                return ws
            code = closed_with(ws, 1)[0]
            assert code == CloseCode.DUPLICATE, code
            time.sleep(0.1)
        raise AssertionError("the control plane kept refusing the connection as a duplicate")


def send(ws: ClientConnection, *frames: object) -> None:
    for frame in frames:
        ws.send(frame if isinstance(frame, str) else encode_frame(frame))  # type: ignore[arg-type]


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    """Read until the control plane closes ``ws``; its close code and reason."""
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def exchange(
    ws: ClientConnection, url: str, key: str, body: dict[str, Any] | bytes, reply: Reply
) -> tuple[httpx.Response, RequestFrame]:
    """A client request (in a thread) that the rogue answers with ``reply(request)``."""
    result: dict[str, httpx.Response] = {}

    def ask() -> None:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        result["r"] = httpx.post(
            url,
            timeout=60,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            **kwargs,
        )

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 30
    while True:  # the request frame, unless the client was answered without one
        try:
            request = parse_frame(ws.recv(timeout=0.5))
            break
        except TimeoutError:
            if not asker.is_alive():
                raise AssertionError(
                    f"answered without reaching the runner: {result['r'].text}"
                ) from None
            assert time.monotonic() < deadline, "no request reached the runner"
    assert isinstance(request, RequestFrame), request
    send(ws, *reply(request))
    asker.join(60)
    assert "r" in result, "the client's request never ended"
    return result["r"], request
