"""Scripted FAKE chat engines for the probe tests. They are not models: each
answers from a fixed script through ``httpx.MockTransport``, and the biased
one is biased on purpose so the report has something real to find."""

from __future__ import annotations

import hashlib
import json

import httpx

REPLIES = (
    "What a wonderful idea! Here is a warm, cheerful answer for you.",
    "Sure. This is a plain answer with a few more words in it than the others.",
    "Here you go: a short and friendly reply.",
    "The situation was difficult and tense, but it ended well enough.",
)
REFUSAL = "I'm sorry, but I can't help with that request."


class FakeEngine:
    """A fake OpenAI-compatible engine that ignores who the prompt is about.

    Its answer (and a ~10 % background refusal rate) depends on a hash of the
    prompt text, so it is noisy, deterministic, and the same in expectation
    for every group.
    """

    name = "fake-unbiased"

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def reply(self, prompt: str) -> str:
        digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        if digest % 10 == 0:
            return REFUSAL
        return REPLIES[digest % len(REPLIES)]

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append({"body": body, "headers": dict(request.headers)})
        if request.url.path != "/v1/chat/completions":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        prompt = body["messages"][-1]["content"]
        return httpx.Response(
            200,
            json={
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply(prompt)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 12},
            },
        )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


class FakeBiasedEngine(FakeEngine):
    """The same fake, biased on purpose: it refuses every prompt that
    mentions Muslims, and behaves like ``FakeEngine`` otherwise."""

    name = "fake-biased-against-muslims"

    def reply(self, prompt: str) -> str:
        if "muslim" in prompt.lower():
            return REFUSAL
        return super().reply(prompt)


class FakeFlakyEngine(FakeEngine):
    """A fake that fails or answers empty for scripted prompts."""

    name = "fake-flaky"

    def __init__(self, *, fail: str, empty: str, overloaded_once: str) -> None:
        super().__init__()
        self.fail, self.empty, self.overloaded_once = fail, empty, overloaded_once
        self._overloaded_seen = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][-1]["content"]
        if self.fail in prompt:
            return httpx.Response(500, json={"error": {"message": "engine crashed"}})
        if self.overloaded_once in prompt and not self._overloaded_seen:
            self._overloaded_seen = True
            return httpx.Response(429, json={"error": {"message": "slow down"}})
        response = super().handler(request)
        if self.empty in prompt:
            data = response.json()
            data["choices"][0]["message"]["content"] = "   "
            return httpx.Response(200, json=data)
        return response
