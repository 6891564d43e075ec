"""Hostile or broken peers on the tunnel endpoint, driven by a raw WebSocket client.

Each case checks the close code and reason, that the control plane stays
healthy, and that the honest runner beside it keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    MAX_FRAME_BYTES,
    CloseCode,
    DataFrame,
    HelloFrame,
    ResponseStartFrame,
    encode_frame,
    handshake_message,
    parse_frame,
)
from tests.tunnel.conftest import TunnelEnv, make_env


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelEnv]:
    e = make_env(tmp_path_factory.mktemp("abuse"))
    try:
        yield e
    finally:
        e.runner.stop(timeout=10)
        e.proxy.close()
        e.cp.stop()


def _enroll(env: TunnelEnv, name: str) -> tuple[str, IdentityKey]:
    token = env.cp.enrollment_token(name)
    key = IdentityKey.generate()
    resp = httpx.post(
        f"{env.cp.url}/api/runners/register",
        json={"identity_public_key": key.public_b64},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["runner_id"], key


def _ws(env: TunnelEnv) -> ClientConnection:
    # Not a context manager: each test drives the connection to its close by hand.
    return connect(
        env.cp.url.replace("http://", "ws://") + "/tunnel/v1",
        max_size=None,
        compression=None,
        open_timeout=10,
        legacy=True,
    )


def _hello(
    ws: ClientConnection, runner_id: str, key: IdentityKey, claimed_id: str | None = None
) -> HelloFrame:
    challenge = parse_frame(ws.recv(timeout=10))
    rid = claimed_id or runner_id
    hello = HelloFrame(
        runner_id=rid,
        version=1,
        signature=key.sign(handshake_message(challenge.nonce, rid, 1)),
        models=[{"name": "abuse-model", "engine": "fake"}],
        capacity=1,
    )
    ws.send(encode_frame(hello))
    return hello


def _close_code(ws: ClientConnection) -> tuple[int | None, str]:
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


def _still_healthy(env: TunnelEnv) -> None:
    assert httpx.get(f"{env.cp.url}/readyz", timeout=5).status_code == 200
    assert env.chat().status_code == 200


@pytest.fixture(scope="module")
def rogue(shared_env: TunnelEnv) -> tuple[str, IdentityKey]:
    return _enroll(shared_env, "rogue")


def _connected(env: TunnelEnv, rogue: tuple[str, IdentityKey]) -> ClientConnection:
    ws = _ws(env)
    _hello(ws, *rogue)
    assert parse_frame(ws.recv(timeout=10)).type == "welcome.v1"
    return ws


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", CloseCode.PROTOCOL_ERROR),
        (json.dumps({"type": "no_such.v1"}), CloseCode.PROTOCOL_ERROR),
        (
            json.dumps({"type": "data.v1", "stream_id": 1, "data": "x", "extra": 1}),
            CloseCode.PROTOCOL_ERROR,
        ),
        (encode_frame(DataFrame(stream_id=99, data="foreign")), CloseCode.PROTOCOL_ERROR),
        (encode_frame(ResponseStartFrame(stream_id=7, status=200)), CloseCode.PROTOCOL_ERROR),
        ("x" * (MAX_FRAME_BYTES + 10), CloseCode.TOO_BIG),
    ],
    ids=["malformed", "unknown-type", "extra-field", "foreign-stream", "out-of-order", "oversized"],
)
def test_bad_frames_close_with_a_reason(
    shared_env: TunnelEnv, rogue: tuple[str, IdentityKey], payload: str, code: int
) -> None:
    ws = _connected(shared_env, rogue)
    ws.send(payload)
    got, reason = _close_code(ws)
    assert got == code and reason
    _still_healthy(shared_env)


def test_binary_and_huge_messages_are_refused(
    shared_env: TunnelEnv, rogue: tuple[str, IdentityKey]
) -> None:
    ws = _connected(shared_env, rogue)
    ws.send(b"\x00" * 100)
    got, _ = _close_code(ws)
    assert got == CloseCode.PROTOCOL_ERROR
    ws = _connected(shared_env, rogue)
    ws.send("y" * (4 * MAX_FRAME_BYTES))  # over the server's max message size
    got, _ = _close_code(ws)
    assert got == 1009  # message too big, closed by the WebSocket layer
    _still_healthy(shared_env)


def test_runner_cannot_claim_another_runners_id(
    shared_env: TunnelEnv, rogue: tuple[str, IdentityKey]
) -> None:
    ws = _ws(shared_env)
    _hello(ws, *rogue, claimed_id=shared_env.runner_id)  # signed with the rogue's own key
    got, _ = _close_code(ws)
    assert got == CloseCode.AUTH_FAILED
    assert shared_env.runner_state()["connected"]
    _still_healthy(shared_env)


def test_replayed_handshake_fails(shared_env: TunnelEnv, rogue: tuple[str, IdentityKey]) -> None:
    ws = _ws(shared_env)
    hello = _hello(ws, *rogue)
    assert parse_frame(ws.recv(timeout=10)).type == "welcome.v1"
    ws.close()
    replay = _ws(shared_env)
    replay.recv(timeout=10)  # a fresh challenge, ignored by the attacker
    replay.send(encode_frame(hello))
    got, _ = _close_code(replay)
    assert got == CloseCode.AUTH_FAILED


def test_silent_peer_is_cut_at_handshake_timeout(tmp_path) -> None:
    env = make_env(tmp_path, cp_env={"OUTPOST_TUNNEL_HANDSHAKE_TIMEOUT_S": "1"})
    try:
        ws = _ws(env)
        ws.recv(timeout=10)  # challenge; never answer
        got, _ = _close_code(ws)
        assert got == CloseCode.HANDSHAKE_TIMEOUT
    finally:
        env.runner.stop(timeout=10)
        env.proxy.close()
        env.cp.stop()
