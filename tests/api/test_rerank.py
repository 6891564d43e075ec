"""``POST /v1/rerank`` through a real stack (issue 23).

A real control plane and a runner started with ``--rerank``: llama.cpp in its
reranking mode (rank pooling) with the embedded SmolLM2 model. SmolLM2 is not
a reranker (it has no classification head), so the scores llama.cpp returns
are real engine output but carry no meaning: these tests check the routing,
the shape, the accounting, the validation and the refusals, never which
document scores higher.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, tenant_records, wait_until
from tests.security.rogue import RogueRunner

MODEL = "smollm2"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "The Seine flows in Paris."]


class Stack:
    def __init__(self, cp: ControlPlaneProcess, key: str, url: str) -> None:
        self.cp, self.key, self.database_url = cp, key, url

    def post(self, path: str, body: dict) -> httpx.Response:
        # json.dumps escapes what UTF-8 cannot carry (a lone surrogate), as a JSON client may.
        return httpx.post(
            f"{self.cp.url}{path}",
            content=json.dumps(body),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
            timeout=60,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("rerank")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url).start()
    runner = RunnerProcess(cp, tmp / "runner", "rerank", args=["--rerank", "--parallel", "2"])
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(key)
        yield Stack(cp, key, url)
    finally:
        runner.stop()
        cp.stop()


def test_the_model_advertises_rerank(stack: Stack) -> None:
    models = httpx.get(
        f"{stack.cp.url}/v1/models", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10
    ).json()["data"]
    assert "rerank" in next(m for m in models if m["id"] == MODEL)["endpoints"]


def test_rerank_scores_every_document_and_is_accounted(stack: Stack) -> None:
    response = stack.post(
        "/v1/rerank", {"model": MODEL, "query": "What is the capital of France?", "documents": DOCS}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    results = answer["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(isinstance(r["relevance_score"], float) for r in results)
    assert all(math.isfinite(r["relevance_score"]) for r in results)
    prompt_tokens = answer["usage"]["prompt_tokens"]
    assert prompt_tokens > 0
    rid = response.headers["x-request-id"]

    def record() -> dict | None:
        return next(
            (r for r in tenant_records(stack.database_url, "default") if r["id"] == rid), None
        )

    wait_until(lambda: record() is not None, 10, "the rerank request's record")
    rec = record()
    assert rec is not None and rec["endpoint"] == "/v1/rerank" and rec["status"] == "ok"
    assert rec["prompt_tokens"] == prompt_tokens and rec["completion_tokens"] == 0


def test_top_n_keeps_that_many_and_is_clamped_to_the_documents(stack: Stack) -> None:
    two = stack.post(
        "/v1/rerank", {"model": MODEL, "query": "Paris", "documents": DOCS, "top_n": 2}
    )
    assert two.status_code == 200, two.text
    scores = [r["relevance_score"] for r in two.json()["results"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    many = stack.post(
        "/v1/rerank", {"model": MODEL, "query": "Paris", "documents": DOCS, "top_n": 1000}
    )
    assert many.status_code == 200 and len(many.json()["results"]) == len(DOCS)


@pytest.mark.parametrize(
    "body",
    [
        {"query": "q", "documents": []},
        {"documents": ["a"]},
        {"query": "", "documents": ["a"]},
        {"query": "q", "documents": ["a"], "top_n": 0},
        {"query": "q", "documents": ["a"], "top_n": "2"},
        {"query": "q", "documents": ["a"] * 1025},
        {"query": "q", "documents": [1, 2]},
        {"query": "\ud800", "documents": ["a"]},
    ],
    ids=[
        "no-documents",
        "no-query",
        "empty-query",
        "top_n-zero",
        "top_n-string",
        "too-many",
        "not-strings",
        "lone-surrogate",
    ],
)
def test_bad_rerank_bodies_are_400s(stack: Stack, body: dict) -> None:
    response = stack.post("/v1/rerank", {"model": MODEL, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_model_without_rerank_is_refused_with_400(stack: Stack) -> None:
    rogue = RogueRunner(stack.cp, "default", "chat-only-model")
    ws = rogue.connect()
    try:
        response = stack.post(
            "/v1/rerank", {"model": "chat-only-model", "query": "q", "documents": ["a"]}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "rerank_unsupported" and error["param"] == "model"
    finally:
        ws.close()


def test_an_unknown_model_is_404(stack: Stack) -> None:
    response = stack.post("/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
