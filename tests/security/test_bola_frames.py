"""API1 (BOLA) on the tunnel: every frame type, sent by another tenant's runner, reaches nothing of
ours.

The HTTP half of the matrix is ``test_bola.py``. Here a *rogue* runner, enrolled by another
tenant and authenticated with its own key, sends every frame type of ``sdk/protocol.py`` while a
victim tenant's client streams from the honest runner. Stream ids are numbers the control plane
gives out per connection (``Link``), so a frame can only ever name a stream of the connection it
arrives on: the rogue naming the victim's stream id names nothing of the victim's.

:data:`FRAME_MATRIX` says what happens to each frame type; a frame type added to the protocol and
not listed fails :func:`test_matrix_covers_every_frame_type`. Outcomes:

* ``closed``: the control plane closes the rogue's connection with 4000 (protocol error) and a
  reason; nothing is delivered anywhere.
* ``ignored``: a late frame for a stream of the rogue's *own* connection that already ended; it
  is dropped and the connection stays up (ids are never reused, so it cannot reach a new stream).
* ``own link``: accepted, and it changes only the rogue's own connection (its load, its draining).

Each case runs while a victim's stream is live on the honest runner, and it must end intact: no
rogue bytes, no error event, exactly
``max_tokens`` tokens, ``[DONE]``.
"""

from __future__ import annotations

import json
import secrets
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.processes import wait_until
from outpost.sdk import protocol
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    ChallengeFrame,
    CloseCode,
    DataFrame,
    DeployFrame,
    EndFrame,
    GoawayFrame,
    HelloFrame,
    ModelInfo,
    ReplicaFrame,
    RequestFrame,
    ResetFrame,
    ResponseStartFrame,
    StatusFrame,
    UndeployFrame,
    Usage,
    WelcomeFrame,
    WindowUpdateFrame,
    encode_frame,
    handshake_message,
    parse_frame,
)
from tests.conftest import Stack

MODEL = "smollm2-135m-instruct"
MARK = "ROGUE-" + secrets.token_hex(
    4
)  # in every payload the rogue sends; must never reach a client
VICTIM_TOKENS = 96


@dataclass
class Case:
    outcome: str  # "closed" | "ignored" | "own link"
    frame: Callable[
        [Rogue], object
    ]  # built per case: some name the victim runner or a live stream id
    what: str


class Rogue:
    """Another tenant's runner: enrolled with its own token, signing with its own key."""

    def __init__(self, stack: Stack, admin: str, model: str) -> None:
        self.stack, self.admin, self.model = stack, admin, model
        token = httpx.post(
            f"{stack.cp.url}/api/runners/enroll",
            json={"name": f"rogue-{secrets.token_hex(3)}"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        ).json()["token"]
        self.key = IdentityKey.generate()
        registered = httpx.post(
            f"{stack.cp.url}/api/runners/register",
            timeout=10,
            json={"identity_public_key": self.key.public_b64},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert registered.status_code == 201, registered.text
        self.runner_id = registered.json()["runner_id"]
        self.victim_runner_id = stack.runner_id

    def connect(self) -> ClientConnection:
        ws = connect(
            self.stack.cp.url.replace("http://", "ws://") + "/tunnel/v1",
            max_size=None,
            compression=None,
            open_timeout=10,
            legacy=True,
        )
        challenge = parse_frame(ws.recv(timeout=10))
        assert isinstance(challenge, ChallengeFrame)
        ws.send(
            encode_frame(
                HelloFrame(
                    runner_id=self.runner_id,
                    version=1,
                    capacity=1,
                    signature=self.key.sign(handshake_message(challenge.nonce, self.runner_id, 1)),
                    models=[{"name": self.model, "engine": "fake"}],
                    capabilities=sorted(protocol.CAPABILITIES),
                )
            )
        )
        assert parse_frame(ws.recv(timeout=10)).type == "welcome.v1"
        return ws

    def served_total(self) -> int | None:
        rows = httpx.get(
            f"{self.stack.cp.url}/api/runners",
            headers={"Authorization": f"Bearer {self.admin}"},
            timeout=10,
        ).json()["data"]
        return next(
            (r["served_total"] for r in rows if r["id"] == self.runner_id and r["connected"]), None
        )


def _live_id() -> int:
    # Any small id: the honest runner's live stream has one like it on *its* connection.
    return 1


FRAME_MATRIX: dict[str, list[Case]] = {
    "challenge.v1": [
        Case(
            "closed",
            lambda r: ChallengeFrame(nonce="n" * 43, versions=[1]),
            "only the control plane challenges",
        )
    ],
    "hello.v1": [
        Case(
            "closed",
            lambda r: HelloFrame(runner_id=r.victim_runner_id, version=1, signature="x" * 86),
            "a second hello, claiming the victim runner's id, after the handshake",
        )
    ],
    "welcome.v1": [
        Case(
            "closed",
            lambda r: WelcomeFrame(version=1, capabilities=[], session_id="s"),
            "only the control plane welcomes",
        )
    ],
    "request.v1": [
        Case(
            "closed",
            lambda r: RequestFrame(
                stream_id=_live_id(),
                path="/v1/chat/completions",
                model=MODEL,
                body=MARK,
                body_length=len(MARK),
            ),
            "a runner cannot open a stream toward the control plane (or a client)",
        )
    ],
    "response_start.v1": [
        Case(
            "closed",
            lambda r: ResponseStartFrame(stream_id=_live_id(), status=200),
            "names a stream id the victim's connection uses; unknown on the rogue's",
        ),
        Case(
            "ignored",
            lambda r: ResponseStartFrame(stream_id=1, status=200),
            "late, for the rogue's own finished stream",
        ),
    ],
    "data.v1": [
        Case(
            "closed",
            lambda r: DataFrame(stream_id=_live_id(), data=f"data: {MARK}\n\n"),
            "injects bytes into a stream id the victim's connection uses",
        ),
        Case(
            "closed", lambda r: DataFrame(stream_id=2**31, data=MARK), "a stream id never given out"
        ),
        Case(
            "ignored",
            lambda r: DataFrame(stream_id=1, data=f"data: {MARK}\n\n"),
            "late, for the rogue's own finished stream",
        ),
    ],
    "end.v1": [
        Case(
            "closed",
            lambda r: EndFrame(
                stream_id=_live_id(), usage=Usage(prompt_tokens=10**6, completion_tokens=10**6)
            ),
            "ends a stream id the victim's connection uses, with fake usage to bill",
        ),
        Case(
            "ignored",
            lambda r: EndFrame(stream_id=1, error=MARK),
            "late, for the rogue's own finished stream",
        ),
    ],
    "reset.v1": [
        Case(
            "closed",
            lambda r: ResetFrame(stream_id=_live_id(), reason=MARK),
            "resets a stream id the victim's connection uses",
        ),
        Case(
            "ignored",
            lambda r: ResetFrame(stream_id=1, reason=MARK),
            "late, for the rogue's own finished stream",
        ),
    ],
    "window_update.v1": [
        Case(
            "closed",
            lambda r: WindowUpdateFrame(stream_id=_live_id(), increment=10**6),
            "credit flows from the control plane to the runner only",
        )
    ],
    "status.v1": [
        Case(
            "own link",
            lambda r: StatusFrame(running=0, waiting=0, completed=987_654),
            "load and counters of the rogue's own connection only",
        )
    ],
    "goaway.v1": [
        Case(
            "own link",
            lambda r: GoawayFrame(reason=MARK, drain_s=0),
            "drains the rogue's own connection only",
        )
    ],
    "deploy.v1": [
        Case(
            "closed",
            lambda r: DeployFrame.model_validate(
                {
                    "replica_id": "rep_rogue",
                    "deployment_id": "dep_rogue",
                    "name": MODEL,
                    "source": {"kind": "path", "path": "m.gguf"},
                }
            ),
            "orders flow from the control plane to the runner only",
        )
    ],
    "undeploy.v1": [
        Case(
            "closed",
            lambda r: UndeployFrame(replica_id="rep_rogue", drain_s=0),
            "orders flow from the control plane to the runner only",
        )
    ],
    "replica.v1": [
        Case(
            "own link",
            lambda r: ReplicaFrame(
                replica_id="rep_invented",
                state="ready",
                model=ModelInfo(name=MODEL, engine="rogue"),
            ),
            "an invented replica 'ready' under the victim's model: never routed, told to undeploy",
        )
    ],
}

CASES = [(t, i) for t, cases in FRAME_MATRIX.items() for i in range(len(cases))]


def test_matrix_covers_every_frame_type() -> None:
    union = typing.get_args(typing.get_args(protocol.Frame)[0])
    types = {cls.model_fields["type"].default for cls in union}
    assert types == set(FRAME_MATRIX), (
        f"list these frame types in FRAME_MATRIX: {types ^ set(FRAME_MATRIX)}"
    )


class Victim:
    """A victim tenant's streaming request on the honest runner, read in a thread."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.text: list[str] = []
        self.started, self.done = threading.Event(), threading.Event()
        self.status: int | None = None
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": VICTIM_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        def read() -> None:
            try:
                with httpx.stream(
                    "POST",
                    f"{stack.base_url}/chat/completions",
                    json=body,
                    timeout=300,
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    self.status = response.status_code
                    for piece in response.iter_text():
                        self.text.append(piece)
                        self.started.set()
            finally:
                self.started.set()
                self.done.set()

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        assert self.started.wait(120) and self.status == 200, "the victim's stream never started"

    def assert_intact(self) -> None:
        assert self.done.wait(300), "the victim's stream never ended"
        text = "".join(self.text)
        assert MARK not in text, "rogue bytes reached the victim's client"
        assert '"error"' not in text, text[-500:]
        events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
        assert usage and usage[-1]["completion_tokens"] == VICTIM_TOKENS


@dataclass
class World:
    stack: Stack
    rogue: Rogue
    victim_key: str


@pytest.fixture(scope="module")
def world(stack: Stack) -> World:
    rogue_admin = stack.cp.cli(
        "keys", "create", "rogue", "--tenant", "bola-rogue", "--admin"
    ).splitlines()[-1]
    return World(
        stack,
        Rogue(stack, rogue_admin, f"rogue-model-{secrets.token_hex(3)}"),
        stack.cp.api_key("bola-victim"),
    )


def _serve_one_own_stream(rogue: Rogue, ws: ClientConnection) -> None:
    """Let the rogue serve one request of its own tenant on ``ws``, so stream 1 exists and ends."""
    result: dict[str, httpx.Response] = {}
    key = rogue.stack.cp.cli(
        "keys", "create", "rogue-client", "--tenant", "bola-rogue"
    ).splitlines()[-1]

    def ask() -> None:
        result["r"] = httpx.post(
            f"{rogue.stack.base_url}/chat/completions",
            timeout=60,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": rogue.model, "messages": [{"role": "user", "content": "hi"}]},
        )

    asker = threading.Thread(target=ask)
    asker.start()
    request = parse_frame(ws.recv(timeout=30))
    assert isinstance(request, RequestFrame) and request.stream_id == 1
    answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})
    for frame in (
        ResponseStartFrame(stream_id=1, status=200),
        DataFrame(stream_id=1, data=answer),
        EndFrame(stream_id=1, usage=Usage(prompt_tokens=1, completion_tokens=1)),
    ):
        ws.send(encode_frame(frame))
    asker.join(60)
    assert result["r"].status_code == 200 and MARK not in result["r"].text


def _closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def _still_open(rogue: Rogue, ws: ClientConnection, marker: int) -> None:
    # Frames are handled in order on a connection: once this status is seen, the frame before it
    # was handled without closing the connection.
    ws.send(encode_frame(StatusFrame(completed=marker)))
    wait_until(lambda: rogue.served_total() == marker, 10, "the rogue's status after the frame")


@pytest.mark.parametrize(("frame_type", "index"), CASES, ids=[f"{t}-{i}" for t, i in CASES])
def test_frame_from_another_tenants_runner(world: World, frame_type: str, index: int) -> None:
    rogue, case = world.rogue, FRAME_MATRIX[frame_type][index]
    ws = rogue.connect()
    try:
        if case.outcome == "ignored":
            _serve_one_own_stream(rogue, ws)
        victim = Victim(
            world.stack, world.victim_key
        )  # streaming from the honest runner from here on
        frame = case.frame(rogue)
        assert frame.type == frame_type  # type: ignore[attr-defined]
        ws.send(encode_frame(frame))  # type: ignore[arg-type]
        if case.outcome == "closed":
            code, reason = _closed_with(ws)
            assert code == CloseCode.PROTOCOL_ERROR and reason, (case.what, code, reason)
        elif frame_type == "status.v1":
            wait_until(lambda: rogue.served_total() == 987_654, 10, "the rogue's own status")
        else:
            _still_open(rogue, ws, 1000 + len(frame_type) * 10 + index)
        live = not victim.done.is_set()
    finally:
        ws.close()
    victim.assert_intact()
    assert live, (
        f"the victim's {VICTIM_TOKENS} tokens ended before the frame was handled; raise "
        "VICTIM_TOKENS"
    )


def test_honest_runner_keeps_its_own_counters(world: World) -> None:
    """The rogue's status frames (fake ``completed``) changed only the rogue's row."""
    stack = world.stack
    rows = httpx.get(
        f"{stack.cp.url}/api/runners",
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=10,
    ).json()["data"]
    honest = next(r for r in rows if r["id"] == stack.runner_id)
    assert honest["connected"] and honest["served_total"] != 987_654
