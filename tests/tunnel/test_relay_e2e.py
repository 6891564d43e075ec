"""The relay end to end with the real llama.cpp engine: binary data, no JSON per content event.

The runner (embedded SmolLM2 on llama.cpp) and the control plane both speak
``binary-data``, so every token below crossed the tunnel as a binary record,
and the runner relayed each content event as text, renaming only its model
member (llama.cpp names its model file). Read with the official ``openai``
client: every chunk carries the public model name, no chunk carries
llama.cpp's ``timings``, usage arrives only when asked for and only in the
last chunk, and the stream ends with a finish reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.tunnel.conftest import MODEL, TunnelEnv, make_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelEnv]:
    e = make_env(tmp_path_factory.mktemp("relay-e2e"))
    try:
        yield e
    finally:
        e.runner.stop(timeout=10)
        e.proxy.close()
        e.cp.stop()


def _client(env: TunnelEnv) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env.cp.url + "/v1", api_key=env.admin_key, max_retries=0, timeout=120
    )


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_streamed_chat_through_the_binary_relay(env: TunnelEnv, include_usage: bool) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = _client(env).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        **extra,  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks
    assert {c.model for c in chunks} == {MODEL}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert not any("timings" in (c.model_extra or {}) for c in chunks)
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
        usage = with_usage[0].usage
        assert usage is not None and 0 < usage.completion_tokens <= 24
    else:
        assert not with_usage


def test_the_answer_matches_the_engine_answered_directly(env: TunnelEnv) -> None:
    # Greedy decoding: the text through the relay is the text of a non-streamed answer.
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = httpx.post(
        f"{env.cp.url}/v1/chat/completions", json=body, headers=env.headers, timeout=120
    )
    assert whole.status_code == 200, whole.text
    assert whole.json()["model"] == MODEL
    streamed = _client(env).chat.completions.create(stream=True, **body)  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.json()["choices"][0]["message"]["content"]
