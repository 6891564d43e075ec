"""FakeOutpost: a control plane (and one runner behind it) as one httpx handler function.

In the manner of ``httpx.MockTransport``: the SDK under test talks HTTP to
:meth:`FakeOutpost.handle`, which answers like the real control plane would.
Its runner side is the real one — :func:`runner.sealed.open_sealed` and
:class:`runner.sealed.SealedWriter` with real keys — so sealed answers are
genuine, and a test can play the *malicious relay* by passing ``tamper``
(a function over the list of SSE events) or serving a swapped key document.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from outpost.runner.sealed import Refused, SealedWriter, open_sealed
from outpost.sdk.e2e import ReplayGuard, RunnerKeys, signed_hpke_key
from outpost.sdk.sealed import E2E_PREFIX, RUNNER_HEADER

RUNNER_ID = "run_fake0000000000000001"
MODEL = "fake-model"

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}
CHUNKS = [
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
    }
    for piece in ("Hel", "lo", " there")
]
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": MODEL,
    "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
EMBEDDINGS = {
    "object": "list",
    "model": MODEL,
    "data": [{"index": 0, "object": "embedding", "embedding": [0.1, 0.2]}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2},
}


def error(
    status: int,
    message: str,
    code: str | None = None,
    type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"message": message, "type": type, "param": None, "code": code}},
        headers=headers,
    )


def sse(events: list[str]) -> httpx.Response:
    return httpx.Response(
        200, content="".join(events).encode(), headers={"content-type": "text/event-stream"}
    )


@dataclass
class FakeOutpost:
    api_key: str = "sk-test"
    keys: RunnerKeys = field(default_factory=RunnerKeys.generate)
    runner_id: str = RUNNER_ID
    # Scripted answers, consumed first-in first-out by the matching path prefix.
    script: list[tuple[str, httpx.Response | Exception]] = field(default_factory=list)
    # The malicious relay: rewrites the runner's SSE events before the client sees them.
    tamper: Callable[[list[str]], list[str]] | None = None
    # Serve this instead of the runner's own key document (a swapped key).
    served_key: dict[str, Any] | None = None
    # The engine's answer to a sealed request, when not the canned success: (status, body).
    engine_error: tuple[int, dict[str, Any]] | None = None
    calls: list[httpx.Request] = field(default_factory=list)
    sealed_bodies: list[dict[str, Any]] = field(default_factory=list)
    admin: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.guard = ReplayGuard()

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.calls]

    # --- the handler --------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        for i, (prefix, answer) in enumerate(self.script):
            if request.url.path.startswith(prefix):
                del self.script[i]
                if isinstance(answer, Exception):
                    raise answer
                return answer
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "Invalid API key.", "invalid_api_key")
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        if path.startswith(E2E_PREFIX + "/") and method == "POST":
            return self._sealed(request, path.removeprefix(E2E_PREFIX + "/"), body)
        route = {
            ("GET", "/v1/models"): lambda: httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [{"id": MODEL, "object": "model", "created": 1, "owned_by": "outpost"}],
                },
            ),
            ("POST", "/v1/chat/completions"): lambda: self._chat(body),
            ("POST", "/v1/completions"): lambda: httpx.Response(200, json=COMPLETION),
            ("POST", "/v1/embeddings"): lambda: httpx.Response(200, json=EMBEDDINGS),
            ("GET", f"{E2E_PREFIX}/runners"): lambda: httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {
                            "runner_id": self.runner_id,
                            "name": "fake",
                            "models": [MODEL],
                            "in_flight": 0,
                            "key": self.key_document(),
                        }
                    ],
                },
            ),
            ("GET", f"/api/runners/{self.runner_id}/e2e-key"): lambda: httpx.Response(
                200, json=self.key_document()
            ),
        }.get((method, path))
        if route is not None:
            return route()
        for name in (f"{method} {path}", path):
            if name in self.admin:
                return httpx.Response(200, json=self.admin[name])
        return error(404, f"Not found: {method} {path}", "not_found")

    def key_document(self) -> dict[str, Any]:
        if self.served_key is not None:
            return self.served_key
        return signed_hpke_key(self.keys.identity, self.keys.hpke_public, self.runner_id)

    def _chat(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("model") != MODEL:
            return error(404, f"The model '{body.get('model')}' does not exist.", "model_not_found")
        if body.get("stream"):
            return sse([f"data: {json.dumps(c)}\n\n" for c in CHUNKS] + ["data: [DONE]\n\n"])
        return httpx.Response(200, json=CHAT)

    # --- the runner, as the real one answers ------------------------------------------

    def _sealed(
        self, request: httpx.Request, endpoint: str, body: dict[str, Any]
    ) -> httpx.Response:
        self.sealed_bodies.append(body)
        if request.headers.get(RUNNER_HEADER) != self.runner_id:
            return error(400, "wrong runner", "e2e_mismatch")
        try:
            opened = open_sealed(
                self.keys,
                self.runner_id,
                self.guard,
                json.dumps(body),
                model=body["model"],
                stream=body.get("stream", False),
            )
        except Refused as refused:
            return httpx.Response(refused.status, content=refused.body().encode())
        writer = SealedWriter(opened.request.response_key, opened.sealed.request_id)
        answer = {"chat/completions": CHAT, "completions": COMPLETION, "embeddings": EMBEDDINGS}[
            endpoint
        ]
        if self.engine_error is not None:
            status, error_body = self.engine_error
            events = [
                writer.head(status, "application/json"),
                *writer.piece(json.dumps(error_body).encode()),
                writer.final(),
            ]
            return sse(events)
        events = [writer.head(200, "application/json")]
        if opened.sealed.stream:
            for chunk in CHUNKS:
                events += writer.piece(json.dumps(chunk).encode())
        else:
            events += writer.piece(json.dumps(answer).encode())
        events.append(writer.final())
        if self.tamper is not None:
            events = self.tamper(events)
        return sse(events)
