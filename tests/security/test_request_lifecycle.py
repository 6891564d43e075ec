"""A rogue runner cannot leak a request's runner slot: whatever ends a request gives it back.

The request path's cleanup lives in one object (control_plane/openai/lifecycle.py).
Before it, a request the runner answered with a response start the client may not get
(an HTML page, a 1xx) was recorded as a 502 ``engine_error`` but kept its admission
slot: after ``capacity`` such answers the runner queued every request until the
queue timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from websockets.sync.client import ClientConnection

from harness.processes import ControlPlaneProcess, tenant_records, wait_until
from outpost.sdk.protocol import (
    DataFrame,
    EndFrame,
    RequestFrame,
    ResetFrame,
    ResponseStartFrame,
    Usage,
    parse_frame,
)
from tests.security.rogue import RogueRunner, exchange

TENANT = "lifecycle"


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlaneProcess, str, RogueRunner]]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url, extra_env={"OUTPOST_RUNNER_WAIT_S": "1"}).start()
    try:
        yield cp, url, RogueRunner(cp, TENANT, "rogue-model")
    finally:
        cp.stop()


def _html(req: RequestFrame) -> list[object]:
    return [
        ResponseStartFrame(stream_id=req.stream_id, status=200, content_type="text/html"),
        DataFrame(stream_id=req.stream_id, data="<html>log in again</html>"),
        EndFrame(stream_id=req.stream_id, usage=Usage(completion_tokens=1)),
    ]


def _ok(req: RequestFrame) -> list[object]:
    return [
        ResponseStartFrame(stream_id=req.stream_id, status=200),
        DataFrame(stream_id=req.stream_id, data='{"object": "chat.completion", "choices": []}'),
        EndFrame(stream_id=req.stream_id, usage=Usage(prompt_tokens=1, completion_tokens=1)),
    ]


def _drain_resets(ws: ClientConnection) -> None:
    """The engine may be told to stop (a reset racing its end frame): not the next request."""
    while True:
        try:
            frame = parse_frame(ws.recv(timeout=0.5))
        except TimeoutError:
            return
        assert isinstance(frame, ResetFrame), frame


def test_bad_response_starts_beyond_capacity_leave_the_runner_free_and_are_priced(world) -> None:
    cp, url, rogue = world
    key = cp.api_key(TENANT)
    chat = {"model": rogue.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ws = rogue.connect()  # capacity 4
    try:
        ids = []
        for _ in range(5):  # one more than the runner's capacity
            response, _ = exchange(ws, f"{cp.url}/v1/chat/completions", key, chat, _html)
            assert (
                response.status_code == 502 and response.json()["error"]["code"] == "engine_error"
            )
            ids.append(response.headers["x-request-id"])
            _drain_resets(ws)
        # Each reached the runner (exchange asserts it): no slot was kept. And the next one is
        # served.
        response, _ = exchange(ws, f"{cp.url}/v1/chat/completions", key, chat, _ok)
        assert response.status_code == 200, response.text
        wait_until(lambda: len(tenant_records(url, TENANT)) == 6, 15, "the request records")
        records = {r["id"]: r for r in tenant_records(url, TENANT)}
        for rid in ids:
            record = records[rid]
            assert (record["status"], record["error_type"], record["runner_id"]) == (
                "error",
                "engine_error",
                rogue.runner_id,
            )
            assert record["engine_share_s"] is not None, (
                "the slot was finished (priced), not left held"
            )
    finally:
        ws.close()
