"""The runner's sealed relay over one tunnel stream, with an httpx.MockTransport engine
(HttpxEngineClient).

The frames it sends are collected as they would go on the wire; the client
side is the SDK's real decoder, the receipt is checked as the control plane
checks it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from outpost.runner.engine_client import HttpxEngineClient
from outpost.runner.relay import EngineEndpoint, relay
from outpost.runner.sealed import SealedRelay
from outpost.runner.streams import OutboundStream
from outpost.sdk.client._e2e import SealedCall, SealedDecoder, open_body, seal_call
from outpost.sdk.e2e import (
    ReplayGuard,
    RunnerKeys,
    VerifiedHpkeKey,
    signed_hpke_key,
    verify_hpke_key,
    verify_receipt,
)
from outpost.sdk.errors import InternalServerError
from outpost.sdk.protocol import DataFrame, EndFrame, RequestFrame, ResponseStartFrame
from outpost.sdk.sealed import E2E_KEY_MISMATCH, E2E_MISMATCH, E2E_REPLAY

RUNNER = "run_sealedtest0000000001"
MODEL = "m"
ENGINE = EngineEndpoint("http://engine.test", {}, {MODEL: "upstream-m"})
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def engine(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert body["model"] == "upstream-m"
    if body["messages"][0]["content"] == "fail":
        raise httpx.ConnectError("engine down")
    if not body.get("stream"):
        return httpx.Response(
            200,
            json={
                "model": "upstream-m",
                "timings": {},
                "usage": USAGE,
                "choices": [{"index": 0, "message": {"content": "hi"}}],
            },
        )
    assert body["stream_options"] == {"include_usage": True}  # asked for the receipt
    events = [
        {"model": "upstream-m", "choices": [{"index": 0, "delta": {"content": t}}]}
        for t in ("a", "b")
    ]
    events.append({"model": "upstream-m", "choices": [], "usage": USAGE})
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


@pytest.fixture(scope="module")
def keys() -> RunnerKeys:
    return RunnerKeys.generate()


@pytest.fixture(scope="module")
def target(keys: RunnerKeys) -> VerifiedHpkeKey:
    return verify_hpke_key(
        signed_hpke_key(keys.identity, keys.hpke_public, RUNNER), keys.identity_public
    )


class Wire:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    async def send(self, frame: Any) -> None:
        self.frames.append(frame)

    @property
    def data(self) -> bytes:
        return "".join(f.data for f in self.frames if isinstance(f, DataFrame)).encode()

    @property
    def end(self) -> EndFrame:
        assert isinstance(self.frames[-1], EndFrame)
        return self.frames[-1]


async def run(
    keys: RunnerKeys, body: dict[str, Any], *, stream: bool, sealed: SealedRelay, model: str = MODEL
) -> Wire:
    wire = Wire()
    text = json.dumps(body)
    frame = RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model=model,
        body=text,
        body_length=len(text),
        stream=stream,
        sealed=True,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
        await relay(
            OutboundStream(frame, wire.send), ENGINE, HttpxEngineClient(http), sealed=sealed
        )
    return wire


def fresh(keys: RunnerKeys) -> SealedRelay:
    # A real relay refuses envelopes sealed before it started (``not_before``); these are sealed
    # first.
    return SealedRelay(keys, RUNNER, guard=ReplayGuard())


def sealed_body(
    target: VerifiedHpkeKey, content: str = "hello", stream: bool = False, **extra: Any
) -> tuple[dict[str, Any], SealedCall]:
    payload = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        **extra,
    }
    if stream:
        payload["stream"] = True
    return seal_call(target, payload, stream=stream)


async def test_whole_answer_goes_out_in_one_frame_with_a_valid_receipt(keys, target) -> None:
    body, call = sealed_body(target)
    wire = await run(keys, body, stream=False, sealed=fresh(keys))
    start, data, end = wire.frames
    assert (
        isinstance(start, ResponseStartFrame)
        and start.status == 200
        and isinstance(data, DataFrame)
    )
    reply = open_body(SealedDecoder(call, lambda o: o, stream=False), wire.data)
    assert reply["model"] == MODEL and "timings" not in reply and reply["usage"] == USAGE
    assert end.usage is None, "no clear usage for a sealed request"
    receipt = verify_receipt(keys.identity_public, end.receipt, call.request_id)
    assert (receipt.prompt_tokens, receipt.completion_tokens, receipt.runner_id) == (9, 3, RUNNER)


async def test_stream_is_sealed_event_by_event_and_hides_the_usage_chunk(keys, target) -> None:
    body, call = sealed_body(target, stream=True)
    wire = await run(keys, body, stream=True, sealed=fresh(keys))
    datas = [f for f in wire.frames if isinstance(f, DataFrame)]
    # The engine's answer arrives in one read: head and both events leave in one frame, then the
    # final chunk.
    assert len(datas) == 2
    decoder = SealedDecoder(call, lambda o: o, stream=True)
    events = [
        e
        for line in wire.data.decode().splitlines()
        if line.startswith("data: ")
        for e in decoder.feed(line[6:])
    ]
    decoder.finish()
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["a", "b"]
    assert (
        verify_receipt(keys.identity_public, wire.end.receipt, call.request_id).completion_tokens
        == 3
    )


async def test_engine_failure_travels_sealed(keys, target) -> None:
    body, call = sealed_body(target, content="fail")
    wire = await run(keys, body, stream=False, sealed=fresh(keys))
    assert wire.frames[0].status == 200  # the relay learns nothing, not even that it failed
    with pytest.raises(InternalServerError) as info:
        open_body(SealedDecoder(call, lambda o: o, stream=False), wire.data)
    assert info.value.status_code == 502 and info.value.code == "engine_error"
    assert verify_receipt(keys.identity_public, wire.end.receipt, call.request_id).total_tokens == 0


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"max_tokens": 3}, 400, E2E_MISMATCH),  # admitted for 3 tokens, the sealed body asks for 4
        ({"model": "other"}, 400, E2E_MISMATCH),
        ({"stream": True}, 400, E2E_MISMATCH),
    ],
)
async def test_clear_fields_that_disagree_are_refused(keys, target, change, status, code) -> None:
    body, _ = sealed_body(target)
    forged = {**body, **change}
    wire = await run(
        keys, forged, stream=forged["stream"], sealed=fresh(keys), model=forged["model"]
    )
    assert wire.frames[0].status == status
    assert json.loads(wire.data)["error"]["code"] == code


async def test_replay_and_foreign_key_are_refused_in_clear(keys, target) -> None:
    sealed = SealedRelay(keys, RUNNER, guard=ReplayGuard())
    body, _ = sealed_body(target)
    assert (await run(keys, body, stream=False, sealed=sealed)).frames[0].status == 200
    again = await run(keys, body, stream=False, sealed=sealed)
    assert again.frames[0].status == 400 and json.loads(again.data)["error"]["code"] == E2E_REPLAY
    rotated = RunnerKeys(keys.identity, RunnerKeys.generate().hpke_key)
    body, _ = sealed_body(target)
    stale = await run(rotated, body, stream=False, sealed=fresh(rotated))
    assert (
        stale.frames[0].status == 409
        and json.loads(stale.data)["error"]["code"] == E2E_KEY_MISMATCH
    )


async def test_runner_without_a_key_refuses_sealed_requests(keys, target) -> None:
    body, _ = sealed_body(target)
    wire = Wire()
    text = json.dumps(body)
    frame = RequestFrame(
        stream_id=1,
        path="/v1/chat/completions",
        model=MODEL,
        body=text,
        body_length=len(text),
        sealed=True,
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
        await relay(OutboundStream(frame, wire.send), ENGINE, HttpxEngineClient(http))
    assert (
        wire.frames[0].status == 400 and json.loads(wire.data)["error"]["code"] == "e2e_unsupported"
    )
