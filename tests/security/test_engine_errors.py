"""Issue 19 with the real llama.cpp engine: its errors keep their meaning, and its vendor caps
cannot be bypassed.

A real control plane (SQLite) with a small ``OUTPOST_MAX_TOKENS_LIMIT``, a real runner with the
embedded SmolLM2 model on one llama.cpp slot, and the official ``openai`` client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, tenant_records, wait_until

MODEL = "smollm2-135m-instruct"
LIMIT = 12  # OUTPOST_MAX_TOKENS_LIMIT: small, so an uncapped generation shows at once
CTX = 512


@dataclass
class Engine:
    cp: ControlPlaneProcess
    client: openai.OpenAI
    database_url: str


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp: Path = tmp_path_factory.mktemp("engine-errors")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(
        tmp / "cp", url, extra_env={"OUTPOST_MAX_TOKENS_LIMIT": str(LIMIT)}
    ).start()
    runner = RunnerProcess(
        cp,
        tmp / "runner",
        "engine-errors",
        args=["--parallel", "1", "--headroom", "0", "--ctx", str(CTX)],
    )
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(cp.cli("keys", "create", "boot", "--admin").splitlines()[-1])
        yield Engine(
            cp, openai.OpenAI(base_url=f"{cp.url}/v1", api_key=key, max_retries=0, timeout=120), url
        )
    finally:
        runner.stop()
        cp.stop()


def _record(engine: Engine, request_id: str) -> dict:
    def find() -> dict | None:
        return next(
            (r for r in tenant_records(engine.database_url, "default") if r["id"] == request_id),
            None,
        )

    wait_until(lambda: find() is not None, 15, "the request record")
    record = find()
    assert record is not None
    return record


def test_engine_5xx_for_a_client_mistake_is_a_502_engine_error(engine: Engine) -> None:
    """llama.cpp answers an image part sent to a text model with a 500; the client gets 502
    engine_error."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.APIStatusError) as caught:
        engine.client.chat.completions.create(
            model=MODEL,
            max_tokens=4,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}
            ],
        )  # type: ignore[list-item]
    error = caught.value
    assert error.status_code == 502, error.response.text
    body = error.response.json()["error"]
    assert body["code"] == "engine_error" and body["type"] == "server_error"
    assert _record(engine, error.response.headers["x-request-id"])["error_type"] == "engine_error"


def test_engine_4xx_stays_a_4xx(engine: Engine) -> None:
    """A prompt longer than the context window: llama.cpp's 400 reaches the client as a 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        engine.client.completions.create(model=MODEL, prompt="hello " * (CTX * 2), max_tokens=4)
    assert caught.value.status_code == 400
    record = _record(engine, caught.value.response.headers["x-request-id"])
    assert (record["http_status"], record["error_type"]) == (400, "engine_rejected")


def test_n_predict_cannot_generate_past_max_tokens(engine: Engine) -> None:
    """llama.cpp reads n_predict before max_tokens: the control plane sends it the request's cap."""
    answer = engine.client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=3,
        temperature=0,
        extra_body={"n_predict": 10, "ignore_eos": True},
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_without_max_tokens_the_engine_stops_at_the_deployments_limit(engine: Engine) -> None:
    answer = engine.client.completions.create(
        model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True}
    )
    assert answer.usage is not None and answer.usage.completion_tokens == LIMIT
    answer = engine.client.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        temperature=0,
        extra_body={"ignore_eos": True, "n_predict": -1},
    )
    assert answer.usage is not None and answer.usage.completion_tokens == LIMIT


def test_token_id_prompt_is_accepted(engine: Engine) -> None:
    answer = engine.client.completions.create(
        model=MODEL, prompt=[1, 2, 3, 4], max_tokens=2, temperature=0
    )
    assert (
        answer.usage is not None
        and answer.usage.completion_tokens <= 2
        and answer.usage.prompt_tokens >= 1
    )
