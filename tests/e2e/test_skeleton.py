"""The walking skeleton: OpenAI client → control plane → tunnel → runner → llama.cpp."""

from __future__ import annotations

import httpx
import openai
import pytest
from sqlalchemy import create_engine, inspect, text

from harness.processes import RunnerProcess
from outpost.control_plane.db.engine import sync_url
from tests.conftest import Stack

MODEL = "smollm2-135m-instruct"


def client(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key or stack.api_key, max_retries=0)


def test_models_lists_embedded_model(stack: Stack) -> None:
    ids = [m.id for m in client(stack).models.list()]
    assert MODEL in ids


def test_non_streaming_chat(stack: Stack) -> None:
    resp = client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert resp.choices[0].message.content
    assert resp.model == MODEL
    assert (
        resp.usage is not None and resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0
    )


def test_streaming_chat_token_by_token(stack: Stack) -> None:
    stream = client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        # llama.cpp's vendor field, passed through: always produce max_tokens, so the count is
        # exact.
        extra_body={"ignore_eos": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) > 3, "expected several content chunks, i.e. token-by-token streaming"
    assert usage is not None and usage.completion_tokens == 16


def test_streaming_without_usage_hides_usage_chunk(stack: Stack) -> None:
    chunks = list(
        client(stack).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)


def test_bad_api_key_is_401_envelope(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(stack, "opsk-000000000000-wrong").models.list()
    assert info.value.status_code == 401
    body = info.value.response.json()
    assert (
        body["error"]["code"] == "invalid_api_key"
        and body["error"]["type"] == "invalid_request_error"
    )


def test_missing_api_key_is_401(stack: Stack) -> None:
    resp = httpx.post(f"{stack.base_url}/chat/completions", json={"model": MODEL, "messages": []})
    assert resp.status_code == 401 and "error" in resp.json()


def test_unknown_model_is_404_envelope(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(stack).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", b'{"model": "x"}', b'{"model": 5, "messages": []}']
)
def test_malformed_body_is_400_envelope(stack: Stack, body: bytes) -> None:
    resp = httpx.post(
        f"{stack.base_url}/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_max_tokens_over_limit_is_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(stack).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10**6
        )
    assert info.value.response.json()["error"]["param"] == "max_tokens"


def test_oversized_body_is_413(stack: Stack) -> None:
    big = "x" * (2 * 1024 * 1024)
    resp = httpx.post(
        f"{stack.base_url}/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": big}]},
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_request_record_has_usage_and_no_content(stack: Stack) -> None:
    canary = "CANARY-7f3a9c-never-stored"
    raw = client(stack).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": f"Repeat: {canary}"}], max_tokens=24
    )
    request_id = raw.headers["x-request-id"]
    completion = raw.parse().choices[0].message.content
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            row = _wait_for_record(conn, request_id)
            assert row["model"] == MODEL and row["runner_id"] == stack.runner_id
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
            assert (
                row["status"] == "ok"
                and row["ttft_ms"] is not None
                and row["latency_ms"] >= row["ttft_ms"]
            )
            dump = _dump_all_tables(conn)
    finally:
        engine.dispose()
    assert canary not in dump
    assert completion and completion.strip() not in dump


def _wait_for_record(conn, request_id: str) -> dict:
    import time

    for _ in range(100):
        row = (
            conn.execute(text("SELECT * FROM request_records WHERE id = :id"), {"id": request_id})
            .mappings()
            .first()
        )
        if row is not None:
            return dict(row)
        conn.commit()
        time.sleep(0.05)
    raise AssertionError(f"no request record for {request_id}")


def _dump_all_tables(conn) -> str:
    parts = []
    for table in inspect(conn).get_table_names():
        parts.extend(repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{table}"')))
    return "\n".join(parts)


def test_runner_not_connected_is_503(stack: Stack, tmp_path) -> None:
    """A runner that served a model goes away: the model is known, so 503 (not 404)."""
    runner = RunnerProcess(
        stack.cp,
        tmp_path / "r2",
        "ephemeral",
        args=["--parallel", "1", "--ctx", "512", "--served-model-name", "ephemeral-model"],
    )
    runner.start()
    try:
        runner.wait_connected(stack.api_key)
        ok = client(stack).chat.completions.create(
            model="ephemeral-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert ok.model == "ephemeral-model"
    finally:
        assert runner.stop() == 0
    with pytest.raises(openai.APIStatusError) as info:
        client(stack).chat.completions.create(
            model="ephemeral-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert info.value.status_code == 503
    assert info.value.response.json()["error"]["code"] == "no_runner_available"


@pytest.mark.parametrize("stream", [False, True], ids=["unstreamed", "streamed"])
def test_engine_refusal_is_passed_through_and_recorded_as_such(stack: Stack, stream: bool) -> None:
    """A prompt longer than the engine's context: the engine's own 4xx reaches the client in the
    OpenAI envelope, and the request record says the engine rejected it (not "ok")."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "lighthouse " * 20000}],
        "max_tokens": 4,
        "stream": stream,
    }
    resp = httpx.post(
        f"{stack.base_url}/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {stack.api_key}"},
    )
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.json()["error"]["message"]
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            row = _wait_for_record(conn, resp.headers["x-request-id"])
    finally:
        engine.dispose()
    assert row["status"] == "error" and row["error_type"] == "engine_rejected", row
    assert row["http_status"] == resp.status_code
