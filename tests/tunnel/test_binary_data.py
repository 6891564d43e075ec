"""Binary data batches (capability ``binary-data``) at the control plane, over a real WebSocket.

A rogue runner speaking the real protocol (a raw WebSocket client) answers
requests the official ``openai`` client sends through a real control plane:
with ``binary-data`` negotiated its records reach the client byte for byte,
several streams' records in one message; without it (an older runner) it
answers with ``data.v1`` and a binary message closes the connection; and
every malformed or oversized binary message, or one that breaks a stream's
order or window, closes it with a protocol close while the control plane
stays up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.processes import ControlPlaneProcess
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    BINARY_DATA,
    CAPABILITIES,
    MAX_DATA_BYTES,
    MAX_FRAME_BYTES,
    CloseCode,
    DataFrame,
    EndFrame,
    HelloFrame,
    RequestFrame,
    ResponseStartFrame,
    Usage,
    encode_data_batch,
    encode_frame,
    handshake_message,
    parse_frame,
)

MODEL = "binary-model"
WINDOW = MAX_DATA_BYTES


@dataclass
class Env:
    cp: ControlPlaneProcess
    key: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("binary")
    # The smallest window the contract allows, so one binary message can fill it.
    cp = ControlPlaneProcess(
        tmp / "cp",
        f"sqlite+aiosqlite:///{tmp / 'cp' / 'outpost.db'}",
        extra_env={"OUTPOST_TUNNEL_STREAM_WINDOW": str(WINDOW)},
    )
    cp.start()
    try:
        yield Env(cp, cp.api_key("default", "binary"))
    finally:
        cp.stop()


def _enroll(env: Env, name: str) -> tuple[str, IdentityKey]:
    key = IdentityKey.generate()
    resp = httpx.post(
        f"{env.cp.url}/api/runners/register",
        json={"identity_public_key": key.public_b64},
        headers={"Authorization": f"Bearer {env.cp.enrollment_token(name)}"},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["runner_id"], key


@pytest.fixture(scope="module")
def rogue(env: Env) -> tuple[str, IdentityKey]:
    return _enroll(env, "binary-rogue")


def _connect(
    env: Env, who: tuple[str, IdentityKey], caps: set[str]
) -> tuple[ClientConnection, list[str]]:
    """A handshaken raw connection announcing ``caps``, and the welcome's capabilities."""
    ws = connect(
        env.cp.url.replace("http://", "ws://") + "/tunnel/v1",
        max_size=None,
        compression=None,
        open_timeout=10,
        legacy=True,
    )
    challenge = parse_frame(ws.recv(timeout=10))
    rid, key = who
    hello = HelloFrame(
        runner_id=rid,
        version=1,
        signature=key.sign(handshake_message(challenge.nonce, rid, 1)),  # type: ignore[union-attr]
        capabilities=sorted(caps),
        models=[{"name": MODEL, "engine": "fake"}],
        capacity=4,
    )
    ws.send(encode_frame(hello))
    welcome = parse_frame(ws.recv(timeout=10))
    assert welcome.type == "welcome.v1"
    return ws, list(welcome.capabilities)  # type: ignore[union-attr]


def _next_request(ws: ClientConnection) -> RequestFrame:
    while True:
        frame = parse_frame(ws.recv(timeout=30))
        if isinstance(frame, RequestFrame):
            return frame


def _close_code(ws: ClientConnection) -> tuple[int | None, str]:
    try:
        while True:
            ws.recv(timeout=15)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def _client(env: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.cp.url + "/v1", api_key=env.key, max_retries=0, timeout=60)


class _Chat(threading.Thread):
    """One streamed chat request through the control plane, in the background."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env, self.text, self.error = env, "", None  # type: ignore[var-annotated]
        self.start()

    def run(self) -> None:
        try:
            stream = _client(self.env).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.text += chunk.choices[0].delta.content
        except Exception as exc:  # noqa: BLE001 - the test reads it
            self.error = exc  # type: ignore[assignment]


def _event(content: str) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()


def _chars(records: list[tuple[int, bytes]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for sid, payload in records:
        out[sid] = out.get(sid, 0) + len(payload.decode())
    return out


def _ready(env: Env) -> None:
    assert httpx.get(f"{env.cp.url}/readyz", timeout=5).status_code == 200


def test_records_of_two_streams_in_one_message_reach_both_clients(
    env: Env, rogue: tuple[str, IdentityKey]
) -> None:
    ws, caps = _connect(env, rogue, set(CAPABILITIES))
    assert "binary-data" in caps
    chats = [_Chat(env), _Chat(env)]
    reqs = [_next_request(ws), _next_request(ws)]
    for req in reqs:
        ws.send(
            encode_frame(
                ResponseStartFrame(
                    stream_id=req.stream_id, status=200, content_type="text/event-stream"
                )
            )
        )
    a, b = reqs[0].stream_id, reqs[1].stream_id
    # Multi-byte UTF-8 (é, ✓, an astral emoji) inside records, and both streams in one message.
    records = [(a, _event("héllo ")), (b, _event("wörld ✓ ")), (a, _event("🙂")), (b, _event("!"))]
    ws.send(encode_data_batch(records))
    for req in reqs:
        ws.send(encode_frame(DataFrame(stream_id=req.stream_id, data="data: [DONE]\n\n")))
        ws.send(
            encode_frame(
                EndFrame(stream_id=req.stream_id, usage=Usage(prompt_tokens=3, completion_tokens=2))
            )
        )
    for chat in chats:
        chat.join(60)
        assert chat.error is None
    by_stream = {a: chats[0], b: chats[1]}
    # Which client got which stream is the control plane's choice: match them by content.
    texts = sorted(c.text for c in by_stream.values())
    assert texts == sorted(["héllo 🙂", "wörld ✓ !"])
    ws.close()
    _ready(env)


def test_an_older_runner_answers_with_data_frames_and_may_not_send_binary(
    env: Env, rogue: tuple[str, IdentityKey]
) -> None:
    ws, caps = _connect(env, rogue, set(CAPABILITIES) - {"binary-data"})
    assert "binary-data" not in caps
    chat = _Chat(env)
    req = _next_request(ws)
    sid = req.stream_id
    ws.send(
        encode_frame(
            ResponseStartFrame(stream_id=sid, status=200, content_type="text/event-stream")
        )
    )
    ws.send(
        encode_frame(
            DataFrame(stream_id=sid, data=_event("old peer").decode() + "data: [DONE]\n\n")
        )
    )
    ws.send(
        encode_frame(EndFrame(stream_id=sid, usage=Usage(prompt_tokens=1, completion_tokens=2)))
    )
    chat.join(60)
    assert chat.error is None and chat.text == "old peer"
    # Not negotiated: a well-formed binary batch is still a protocol violation.
    ws.send(encode_data_batch([(sid, b"data: late\n\n")]))
    code, reason = _close_code(ws)
    assert code == CloseCode.PROTOCOL_ERROR and "binary-data" in reason
    _ready(env)


_HEADER = len(encode_data_batch([(1, b"")])) - 1


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"", CloseCode.PROTOCOL_ERROR),
        (bytes((BINARY_DATA + 1,)) + encode_data_batch([(1, b"x")])[1:], CloseCode.PROTOCOL_ERROR),
        (bytes((BINARY_DATA,)), CloseCode.PROTOCOL_ERROR),  # no record
        (encode_data_batch([(1, b"x")])[:-3], CloseCode.PROTOCOL_ERROR),  # truncated
        (encode_data_batch([(1, b"abc")])[:-1], CloseCode.PROTOCOL_ERROR),  # shorter than declared
        (encode_data_batch([(0, b"x")]), CloseCode.PROTOCOL_ERROR),  # stream id 0
        (encode_data_batch([(2**63, b"x")]), CloseCode.PROTOCOL_ERROR),  # beyond any id
        (encode_data_batch([(1, b"\xff\xfe")]), CloseCode.PROTOCOL_ERROR),  # not UTF-8
        (encode_data_batch([(1, b"x" * (MAX_DATA_BYTES + 1))]), CloseCode.PROTOCOL_ERROR),
        (encode_data_batch([(999, b"foreign")]), CloseCode.PROTOCOL_ERROR),  # never opened
        # Over MAX_FRAME_BYTES: the WebSocket layer's own limit (1009) or the contract's (4009).
        (encode_data_batch([(1, b"x" * 1000)] * 70), CloseCode.TOO_BIG),
    ],
    ids=[
        "empty",
        "unknown-kind",
        "no-record",
        "truncated-header",
        "short-payload",
        "stream-zero",
        "stream-too-large",
        "not-utf8",
        "record-too-long",
        "foreign-stream",
        "oversized",
    ],
)
def test_malformed_binary_messages_close_the_connection(
    env: Env, rogue: tuple[str, IdentityKey], message: bytes, code: int
) -> None:
    assert len(encode_data_batch([(1, b"x" * 1000)] * 70)) > MAX_FRAME_BYTES
    ws, _ = _connect(env, rogue, set(CAPABILITIES))
    ws.send(message)
    got, reason = _close_code(ws)
    assert (got == code or (code == CloseCode.TOO_BIG and got == 1009)) and reason
    _ready(env)


def test_binary_data_before_response_start_or_past_the_window_closes(
    env: Env, rogue: tuple[str, IdentityKey]
) -> None:
    ws, _ = _connect(env, rogue, set(CAPABILITIES))
    chat = _Chat(env)
    req = _next_request(ws)
    ws.send(encode_data_batch([(req.stream_id, b"data: early\n\n")]))
    got, reason = _close_code(ws)
    assert got == CloseCode.PROTOCOL_ERROR and "response_start" in reason
    chat.join(60)
    assert chat.error is not None  # the client is told, not left hanging

    # The window counts characters, as for data.v1: a window of two-byte characters (twice
    # the window in bytes) in one message is accepted and reaches the client whole ...
    ws, _ = _connect(env, rogue, set(CAPABILITIES))
    chat = _Chat(env)
    req = _next_request(ws)
    sid = req.stream_id
    assert req.window == WINDOW
    start = ResponseStartFrame(stream_id=sid, status=200, content_type="text/event-stream")
    ws.send(encode_frame(start))
    head, tail = _event("é" * 100), b"data: [DONE]\n\n"
    fill = WINDOW - len(head.decode()) - len(tail)
    filler = b": " + "é".encode() * (fill - 4) + b"\n\n"  # an SSE comment, ignored
    # Cut at a character boundary: "é" starts at every even offset of the filler.
    records = [(sid, head), (sid, filler[:MAX_DATA_BYTES]), (sid, filler[MAX_DATA_BYTES:])]
    records.append((sid, tail))
    assert sum(_chars(records).values()) == WINDOW
    assert sum(len(p) for _, p in records) > WINDOW
    ws.send(encode_data_batch(records))
    ws.send(
        encode_frame(EndFrame(stream_id=sid, usage=Usage(prompt_tokens=1, completion_tokens=1)))
    )
    chat.join(60)
    assert chat.error is None and chat.text == "é" * 100
    ws.close()

    # ... and one character more than the window, in one message, is a protocol close.
    ws, _ = _connect(env, rogue, set(CAPABILITIES))
    chat = _Chat(env)
    sid = _next_request(ws).stream_id
    ws.send(
        encode_frame(
            ResponseStartFrame(stream_id=sid, status=200, content_type="text/event-stream")
        )
    )
    comment = b":" + b"x" * (WINDOW - 3) + b"\n\n"  # an SSE comment the size of the window
    ws.send(encode_data_batch([(sid, comment), (sid, b"\n")]))
    got, reason = _close_code(ws)
    assert got == CloseCode.PROTOCOL_ERROR and "window" in reason
    chat.join(60)
    assert chat.error is not None
    _ready(env)


def test_a_late_record_is_ignored_and_one_for_a_stream_never_opened_closes(
    env: Env, rogue: tuple[str, IdentityKey]
) -> None:
    ws, _ = _connect(env, rogue, set(CAPABILITIES))

    def answer(content: str) -> int:
        chat = _Chat(env)
        sid = _next_request(ws).stream_id
        start = ResponseStartFrame(stream_id=sid, status=200, content_type="text/event-stream")
        ws.send(encode_frame(start))
        ws.send(encode_data_batch([(sid, _event(content)), (sid, b"data: [DONE]\n\n")]))
        usage = Usage(prompt_tokens=1, completion_tokens=1)
        ws.send(encode_frame(EndFrame(stream_id=sid, usage=usage)))
        chat.join(60)
        assert chat.error is None and chat.text == content
        return sid

    ended = answer("first")
    # A record for the stream that just ended (a runner's send racing the end): harmless, the
    # connection keeps serving ...
    ws.send(encode_data_batch([(ended, b"data: late\n\n")]))
    answer("second")
    # ... but data for a stream the control plane never opened (another request's, guessed) is
    # a protocol violation: the connection closes.
    ws.send(encode_data_batch([(ended + 1000, b"data: forged\n\n")]))
    got, reason = _close_code(ws)
    assert got == CloseCode.PROTOCOL_ERROR and "unknown stream" in reason
    _ready(env)
