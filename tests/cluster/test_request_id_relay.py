"""A request id crosses the Redis relay: the client's id reaches the runner held by another
replica."""

from __future__ import annotations

import secrets

import httpx

from harness.processes import wait_until
from tests.cluster.conftest import MODEL, OnB


def test_the_request_id_reaches_a_runner_on_the_other_replica(on_b: OnB) -> None:
    cluster = on_b.cluster
    rid = f"relay-{secrets.token_hex(6)}"
    resp = httpx.post(
        f"{cluster.a.url}/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {cluster.admin_key}", "X-Request-Id": rid},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    )
    assert resp.status_code == 200, resp.text
    assert (
        resp.headers["x-request-id"] == rid and resp.headers["x-outpost-runner"] == on_b.runner_id
    )
    # Text logs end a line with "[id]" (sdk/logfmt.py): the origin's line for the request, and the
    # runner's line for the stream that replica B opened for it.
    wait_until(lambda: f"[{rid}]" in on_b.runner.log(), 10, f"{rid} in the runner's log")
    assert any(
        f"[{rid}]" in line and "record req_" in line for line in cluster.a.log().splitlines()
    )
