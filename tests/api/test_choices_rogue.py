"""Several choices (``n`` > 1) against a rogue runner speaking the real protocol (issue 23).

A real control plane (uvicorn, SQLite) and a rogue runner that answers each
choice's request with what no engine should: choice indices of its own, a
usage chunk and an end frame claiming a million tokens, a choice whose stream
ends in an error. The merged answer still says ``index`` 0..n-1, each choice is
billed as its own request within its cap, and an error event ends the stream.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess, tenant_records, wait_until
from outpost.sdk.protocol import (
    DataFrame,
    EndFrame,
    RequestFrame,
    ResponseStartFrame,
    Usage,
    parse_frame,
)
from tests.security.rogue import RogueRunner, send

MODEL = "rogue-choices"
CAP = 5


class World:
    def __init__(self, cp: ControlPlaneProcess, key: str, url: str) -> None:
        self.cp, self.key, self.url = cp, key, url
        self.rogue = RogueRunner(cp, "default", MODEL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("choices-rogue")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url, extra_env={"OUTPOST_RUNNER_WAIT_S": "1"}).start()
    try:
        yield World(cp, cp.api_key(), url)
    finally:
        cp.stop()


def _sse(*events: object) -> str:
    return "".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in (*events, "[DONE]")
    )


def _lying_stream(req: RequestFrame) -> list[object]:
    data = _sse(
        {"id": f"x{req.stream_id}", "choices": [{"index": 7, "delta": {"content": "hi"}}]},
        {"id": "y", "choices": [{"index": 3, "delta": {}, "finish_reason": "stop"}]},
        {"id": "z", "choices": [], "usage": {"prompt_tokens": 10**6, "completion_tokens": 10**6}},
    )
    return [
        ResponseStartFrame(stream_id=req.stream_id, status=200, content_type="text/event-stream"),
        DataFrame(stream_id=req.stream_id, data=data),
        EndFrame(
            stream_id=req.stream_id, usage=Usage(prompt_tokens=10**6, completion_tokens=10**6)
        ),
    ]


def _serve_choices(
    world: World, body: dict, answer: Callable[[int, RequestFrame], list[object]], n: int
) -> tuple[httpx.Response, str, list[RequestFrame]]:
    ws = world.rogue.connect()
    result: dict[str, object] = {}

    def ask() -> None:
        with httpx.stream(
            "POST",
            f"{world.cp.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {world.key}"},
            timeout=60,
        ) as response:
            result["text"] = response.read().decode()
            result["response"] = response

    asker = threading.Thread(target=ask)
    asker.start()
    requests: list[RequestFrame] = []
    try:
        while len(requests) < n:
            frame = parse_frame(ws.recv(timeout=30))
            if isinstance(frame, RequestFrame):
                requests.append(frame)
        for i, req in enumerate(requests):
            send(ws, *answer(i, req))
        asker.join(60)
    finally:
        ws.close()
    response = result["response"]
    assert isinstance(response, httpx.Response)
    return response, str(result["text"]), requests


def test_lying_indices_and_usage_do_not_cross_the_merge(world: World) -> None:
    before = {r["id"] for r in tenant_records(world.url, "default")}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "n": 2,
        "max_tokens": CAP,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response, text, requests = _serve_choices(world, body, lambda i, r: _lying_stream(r), 2)
    assert response.status_code == 200, text
    # Each choice reached the runner as a request for one sequence.
    assert all("n" not in json.loads(r.body) for r in requests)  # type: ignore[arg-type]
    events = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
    indices = {c["index"] for e in events for c in e["choices"]}
    assert indices == {0, 1}
    assert len({e["id"] for e in events}) == 1
    assert text.rstrip().endswith("data: [DONE]") and text.count("[DONE]") == 1

    def new() -> list[dict]:
        return [r for r in tenant_records(world.url, "default") if r["id"] not in before]

    wait_until(lambda: len(new()) == 2, 10, "a record per choice")
    for record in new():  # billed as one request each, within its cap, whatever the runner said
        assert record["completion_tokens"] <= CAP
        assert record["prompt_tokens"] <= len(json.dumps(body))


def test_an_error_in_one_choice_ends_the_merged_stream_with_it(world: World) -> None:
    def answer(i: int, req: RequestFrame) -> list[object]:
        if i == 0:
            return _lying_stream(req)
        return [
            ResponseStartFrame(
                stream_id=req.stream_id, status=200, content_type="text/event-stream"
            ),
            DataFrame(  # a token, then the engine dies: no [DONE]
                stream_id=req.stream_id,
                data='data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
            ),
            EndFrame(stream_id=req.stream_id, error="engine crashed"),
        ]

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "n": 2,
        "max_tokens": CAP,
        "stream": True,
    }
    response, text, _ = _serve_choices(world, body, answer, 2)
    assert response.status_code == 200
    errors = [
        json.loads(line[6:]) for line in text.split("\n") if line.startswith('data: {"error"')
    ]
    assert len(errors) == 1 and errors[0]["error"]["code"] == "engine_error", text
    assert text.rstrip().endswith("data: [DONE]")  # as a one-choice stream ends
