"""Resource limits (API4): each bounded with a clear error envelope, never a 5xx.

A slow stream reader not stalling others is shown in tests/tunnel/test_flow_control.py; the tunnel's
message size limit in tests/tunnel/test_protocol_abuse.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx

from tests.conftest import Stack

CHAT = "/v1/chat/completions"


def _post(stack: Stack, key: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    return httpx.post(f"{stack.cp.url}{CHAT}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def _bounded(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def _envelope(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_oversized_body_is_413(stack: Stack) -> None:
    big = (
        b'{"model": "m", "messages": [{"role": "user", "content": "'
        + b"x" * (2 * 1024 * 1024)
        + b'"}]}'
    )
    _bounded(_post(stack, stack.api_key, content=big))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    _bounded(_post(stack, stack.api_key, content=chunks()))


def test_huge_max_tokens_is_400(stack: Stack) -> None:
    model = stack.cp.models(stack.api_key)[0]
    for field in ("max_tokens", "max_completion_tokens"):
        response = _post(
            stack,
            stack.api_key,
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], field: 10**9},
        )
        _envelope(response, 400, "max_tokens_too_large")


def test_per_key_rate_limit_is_429(stack: Stack) -> None:
    # The full behaviour (Retry-After, headers, refill) is in tests/api/test_openai_routing_e2e.py.
    key = stack.cp.cli(
        "keys", "create", "limits-rpm", "--tenant", "limits", "--rate-limit-rpm", "1"
    ).splitlines()[-1]
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    assert _post(stack, key, json=body).status_code == 404  # admitted, then no such model
    refused = _post(stack, key, json=body)
    _envelope(refused, 429, "rate_limit_exceeded")
    assert int(refused.headers["retry-after"]) >= 1


def test_many_idle_connections_do_not_break_the_server(stack: Stack) -> None:
    idle: list[socket.socket] = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", stack.cp.port), timeout=5)
            if i % 2:  # half send a partial request and then go quiet (slowloris)
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            idle.append(s)
        response = httpx.get(
            f"{stack.cp.url}/v1/models",
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=10,
        )
        assert response.status_code == 200
        assert httpx.get(f"{stack.cp.url}/readyz", timeout=10).status_code == 200
    finally:
        for s in idle:
            s.close()
    assert httpx.get(f"{stack.cp.url}/healthz", timeout=10).status_code == 200
