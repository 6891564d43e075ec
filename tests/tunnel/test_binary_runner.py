"""The runner's side of ``binary-data``, against a control plane of the test's own.

A real WebSocket server here plays the control plane (the handshake and a
request, as ``sdk.protocol`` defines them) and welcomes the real
``TunnelClient`` with or without ``binary-data``: a new control plane gets
the runner's data as binary records — several streams' in one message — and
an older one gets ``data.v1`` frames, byte for byte the same text, with the
end frame after the data either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from outpost.runner.identity import RunnerIdentity
from outpost.runner.streams import OutboundStream
from outpost.runner.tunnel import TunnelClient
from outpost.sdk.identity import IdentityKey
from outpost.sdk.protocol import (
    CAPABILITIES,
    ChallengeFrame,
    DataFrame,
    EndFrame,
    HelloFrame,
    RequestFrame,
    ResponseStartFrame,
    StatusFrame,
    Usage,
    WelcomeFrame,
    encode_frame,
    parse_data_batch,
    parse_frame,
)

# Multi-byte UTF-8 and a piece longer than one record (MAX_DATA_BYTES) in the answer.
PIECES = ["data: héllo\n\n", "data: ✓ 🙂\n\n", "data: " + "é" * 20_000 + "\n\n"]


async def _answer(out: OutboundStream) -> None:
    await out.start(200, "text/event-stream")
    for piece in PIECES:
        await asyncio.sleep(0)  # as a relay waits for the engine's next read
        await out.data(piece)
    await out.end(Usage(prompt_tokens=2, completion_tokens=3))


async def _serve_two_streams(
    caps: list[str],
    runner_caps: frozenset[str] | None = None,
) -> tuple[HelloFrame, list[str | bytes]]:
    """Welcome one runner with ``caps`` and open streams 1 and 2: its hello and what came back."""
    got: list[str | bytes] = []
    hello_seen: list[HelloFrame] = []
    done = asyncio.Event()

    async def control_plane(ws: ServerConnection) -> None:
        await ws.send(encode_frame(ChallengeFrame(nonce=secrets.token_urlsafe(32), versions=[1])))
        hello = parse_frame(await ws.recv())
        assert isinstance(hello, HelloFrame)
        hello_seen.append(hello)
        await ws.send(encode_frame(WelcomeFrame(version=1, capabilities=caps, session_id="s")))
        for sid in (1, 2):
            req = RequestFrame(
                stream_id=sid, path="/v1/chat/completions", model="m", body="{}", body_length=2
            )
            await ws.send(encode_frame(req))
        with contextlib.suppress(ConnectionClosed):  # the runner is cancelled at the end
            await _collect(ws)

    async def _collect(ws: ServerConnection) -> None:
        ended = 0
        async for message in ws:
            if isinstance(message, str) and parse_frame(message).type == "status.v1":
                continue
            got.append(message)
            if isinstance(message, str) and isinstance(parse_frame(message), EndFrame):
                ended += 1
                if ended == 2:
                    done.set()

    async with serve(control_plane, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        client = TunnelClient(
            identity=RunnerIdentity("r1", IdentityKey.generate(), f"http://127.0.0.1:{port}"),
            hello_fields=lambda: {"models": [{"name": "m", "engine": "fake"}], "capacity": 2},
            on_stream=_answer,
            status=StatusFrame,
            connections=1,
            capabilities=runner_caps,
        )
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return hello_seen[0], got


def _per_stream(messages: list[str | bytes]) -> tuple[dict[int, str], list[int]]:
    """Data text per stream, and the stream ids of the frames in the order they came."""
    text: dict[int, str] = {1: "", 2: ""}
    order: list[int] = []
    for m in messages:
        if isinstance(m, bytes):
            for sid, piece in parse_data_batch(m):
                text[sid] += piece
                order.append(sid)
            continue
        frame = parse_frame(m)
        assert isinstance(frame, ResponseStartFrame | DataFrame | EndFrame), frame
        if isinstance(frame, DataFrame):
            text[frame.stream_id] += frame.data
        order.append(frame.stream_id)
    return text, order


def _ends_after_data(messages: list[str | bytes]) -> None:
    ended: set[int] = set()
    started: set[int] = set()
    for m in messages:
        if isinstance(m, bytes):
            sids = {sid for sid, _ in parse_data_batch(m)}
        else:
            frame = parse_frame(m)
            if isinstance(frame, ResponseStartFrame):
                started.add(frame.stream_id)
                continue
            if isinstance(frame, EndFrame):
                ended.add(frame.stream_id)
                continue
            sids = {frame.stream_id}  # type: ignore[union-attr]
        assert not sids & ended, "data after its stream's end"
        assert sids <= started, "data before its stream's response_start"


async def test_a_new_control_plane_gets_binary_records_coalesced_across_streams() -> None:
    hello, got = await _serve_two_streams(sorted(CAPABILITIES))
    assert "binary-data" in hello.capabilities
    text, _ = _per_stream(got)
    assert text == {1: "".join(PIECES), 2: "".join(PIECES)}
    binary = [m for m in got if isinstance(m, bytes)]
    assert binary and not any(isinstance(m, str) and parse_frame(m).type == "data.v1" for m in got)
    # The two streams' data was ready together: some message carries records of both.
    assert any(len({sid for sid, _ in parse_data_batch(m)}) == 2 for m in binary)
    _ends_after_data(got)


async def test_an_older_control_plane_gets_data_frames() -> None:
    caps = sorted(CAPABILITIES - {"binary-data"})
    hello, got = await _serve_two_streams(caps)
    assert "binary-data" in hello.capabilities  # offered, not taken up
    assert not any(isinstance(m, bytes) for m in got)
    text, _ = _per_stream(got)
    assert text == {1: "".join(PIECES), 2: "".join(PIECES)}
    _ends_after_data(got)


@pytest.mark.parametrize("welcome", [sorted(CAPABILITIES)], ids=["welcome-claims-it"])
async def test_a_runner_that_did_not_offer_it_never_sends_binary(welcome: list[str]) -> None:
    # A control plane that echoes a capability the runner did not announce gets data.v1.
    hello, got = await _serve_two_streams(welcome, CAPABILITIES - {"binary-data", "deployments"})
    assert "binary-data" not in hello.capabilities
    assert not any(isinstance(m, bytes) for m in got)
    text, _ = _per_stream(got)
    assert text == {1: "".join(PIECES), 2: "".join(PIECES)}
