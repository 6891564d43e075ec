"""POST /v1/messages with the official ``anthropic`` client, against a real stack and the embedded
model: text, streaming, tool-use turns, auth by ``x-api-key`` or Bearer, errors in Anthropic's
shape, and accounting, pools and budgets as for chat completions."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from harness.processes import tenant_records, wait_until
from tests.dialects.conftest import MODEL, DialectStack


def client(stack: DialectStack, key: str | None = None) -> anthropic.Anthropic:
    # The SDK sends the key as x-api-key, and anthropic-version on every request.
    return anthropic.Anthropic(base_url=stack.url, api_key=key or stack.api_key, max_retries=0)


def _post(
    stack: DialectStack, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/messages",
        json=body,
        headers={"x-api-key": stack.api_key, "anthropic-version": "2023-06-01", **(headers or {})},
        timeout=120,
    )


def test_text_message_is_accounted(dialect_stack: DialectStack) -> None:
    raw = client(dialect_stack).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=8,
        system=[{"type": "text", "text": "You are terse."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
        extra_body={"temperature": 0},  # this SDK version has no temperature argument
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.content and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8
    request_id = raw.headers["x-request-id"]
    rows: list[dict] = []

    def written() -> bool:
        rows[:] = [
            r
            for r in tenant_records(dialect_stack.database_url, "default")
            if r["id"] == request_id
        ]
        return bool(rows)

    wait_until(written, 10, f"the record of {request_id}")
    assert rows[0]["status"] == "ok" and rows[0]["runner_id"] == dialect_stack.runner_id
    assert rows[0]["prompt_tokens"] == message.usage.input_tokens
    assert rows[0]["completion_tokens"] == message.usage.output_tokens


def test_token_cap_stops_with_max_tokens(dialect_stack: DialectStack) -> None:
    message = client(dialect_stack).messages.create(
        model=MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": "Count from one to one hundred."}],
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_bearer_auth_works_too(dialect_stack: DialectStack) -> None:
    bearer = anthropic.Anthropic(
        base_url=dialect_stack.url, auth_token=dialect_stack.api_key, max_retries=0
    )
    message = bearer.messages.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.usage.output_tokens > 0


def test_stream_events_and_accumulated_message(dialect_stack: DialectStack) -> None:
    with client(dialect_stack).messages.stream(
        model=MODEL,
        max_tokens=12,
        messages=[{"role": "user", "content": "Count from one to ten."}],
        extra_body={"temperature": 0},
    ) as stream:
        kinds = []
        text = ""
        for event in stream:
            kinds.append(event.type)
            if event.type == "text":
                text += event.text
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    for expected in ("content_block_start", "content_block_delta", "content_block_stop"):
        assert expected in kinds
    assert "message_delta" in kinds
    assert kinds.count("content_block_delta") > 2, "expected token-by-token deltas"
    assert final.content[0].type == "text" and final.content[0].text == text and text
    # Usage arrives with message_delta: the input count included.
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_a_tool_use_turn_and_its_result_are_accepted(dialect_stack: DialectStack) -> None:
    """The second turn of a tool loop: the assistant's tool_use and the user's tool_result."""
    message = client(dialect_stack).messages.create(
        model=MODEL,
        max_tokens=12,
        tools=[
            {
                "name": "get_weather",
                "description": "Weather of a city.",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }
        ],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C."}
                ],
            },
        ],
        extra_body={"temperature": 0},
    )
    assert message.content and message.usage.input_tokens > 0


def test_missing_key_is_an_anthropic_401(dialect_stack: DialectStack) -> None:
    resp = httpx.post(
        f"{dialect_stack.url}/v1/messages",
        json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    assert resp.status_code == 401
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        client(dialect_stack, "opsk-000000000000-wrong").messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "x"}]
        )


def test_unknown_model_is_an_anthropic_404(dialect_stack: DialectStack) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client(dialect_stack).messages.create(
            model="no-such-model", max_tokens=2, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 10**9, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 2, "messages": []}, "messages"),
        (
            {
                "max_tokens": 2,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "x"}}],
                    }
                ],
            },
            "messages.0.content",
        ),
        (
            {
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}],
                "stop_sequences": ["s"] * 17,
            },
            "stop_sequences",
        ),
        (
            {
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "thinking",
        ),
        (
            {"max_tokens": 2, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5},
            "temperature",
        ),
        (
            {
                "max_tokens": 2,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ],
            },
            "tool_use",
        ),
        (
            {
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "any"},
            },
            "tool_choice",
        ),
        (
            {
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "f", "input_schema": {}}] * 129,
            },
            "tools",
        ),
        ({"max_tokens": 2, "messages": [{"role": "system", "content": "x"}]}, "role"),
        (
            {
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "f", "input_schema": {"d": "x" * 70_000}}],
            },
            "tools.0.input_schema",
        ),
    ],
)
def test_malformed_or_oversize_input_is_an_anthropic_400(
    dialect_stack: DialectStack, body: dict, needle: str
) -> None:
    resp = _post(dialect_stack, {"model": MODEL, **body})
    assert resp.status_code == 400, resp.text
    payload = resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert needle in payload["error"]["message"], payload


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        # A lone surrogate: valid JSON, not encodable as UTF-8 for the runner.
        b'{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "\\ud800"}]}',
    ],
)
def test_body_that_cannot_be_read_is_an_anthropic_400(
    dialect_stack: DialectStack, raw: bytes
) -> None:
    resp = httpx.post(
        f"{dialect_stack.url}/v1/messages",
        content=raw,
        headers={"x-api-key": dialect_stack.api_key, "content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_other_tenant_cannot_use_a_model_outside_its_pools(dialect_stack: DialectStack) -> None:
    _, outsider = dialect_stack.key("outsider-messages", "k")
    chat = httpx.post(
        f"{dialect_stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {outsider}"},
        timeout=60,
    )
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    door = _post(dialect_stack, body, {"x-api-key": outsider})
    assert chat.status_code >= 400 and door.status_code == chat.status_code
    assert door.json()["type"] == "error" and door.json()["error"]["message"]
    # A stream has its headers at once here: the refusal is an Anthropic error event.
    streamed = _post(dialect_stack, {**body, "stream": True}, {"x-api-key": outsider})
    assert streamed.status_code == 200
    last = streamed.text.rstrip().split("\n\n")[-1]
    assert last.startswith("event: error")
    error = json.loads(last.split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == door.json()["error"]["type"]
    assert "message_stop" not in streamed.text
    with pytest.raises(anthropic.APIStatusError):
        with client(dialect_stack, outsider).messages.stream(**body) as stream:  # type: ignore[arg-type]
            list(stream)
    wait_until(
        lambda: len(tenant_records(dialect_stack.database_url, "outsider-messages")) == 4,
        10,
        "4 records",
    )
    records = tenant_records(dialect_stack.database_url, "outsider-messages")
    assert all(r["runner_id"] is None and r["status"] != "ok" for r in records), records


def test_a_spent_budget_stops_the_key(dialect_stack: DialectStack) -> None:
    _, admin = dialect_stack.key("default", "messages-budget-admin", admin=True)
    capped_id, capped = dialect_stack.key("default", "messages-capped")
    created = httpx.post(
        f"{dialect_stack.url}/api/budgets",
        json={"api_key_id": capped_id, "period": "month", "amount_usd": 0},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    with pytest.raises(anthropic.RateLimitError) as info:
        client(dialect_stack, capped).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "budget" in info.value.body["error"]["message"]  # type: ignore[index]


WEATHER = {
    "name": "get_weather",
    "description": "The current weather of a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_tool_choice_any_gives_a_tool_use_block(dialect_stack: DialectStack) -> None:
    message = client(dialect_stack).messages.create(
        model=MODEL,
        max_tokens=80,
        tools=[WEATHER],  # type: ignore[list-item]
        # One call, then the end (this model would go on calling).
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        extra_body={"temperature": 0},
    )
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, message.content
    assert uses[0].name == "get_weather" and uses[0].id and isinstance(uses[0].input["city"], str)
    assert len(uses) == 1
    assert message.stop_reason == "tool_use"


def test_streamed_tool_use_input(dialect_stack: DialectStack) -> None:
    with client(dialect_stack).messages.stream(
        model=MODEL,
        max_tokens=80,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        extra_body={"temperature": 0},
    ) as stream:
        partial = "".join(
            e.delta.partial_json
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        )
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    assert partial and uses[0].input == json.loads(partial)
    assert final.stop_reason == "tool_use"


def test_count_tokens_is_not_served(dialect_stack: DialectStack) -> None:
    """Documented as not served (docs/api.md): a clear 404, not a page of the console."""
    resp = _post_path(dialect_stack, "/v1/messages/count_tokens")
    assert resp.status_code == 404 and resp.json()["error"]["message"]


def _post_path(stack: DialectStack, path: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}{path}",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": stack.api_key, "Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        (
            "/v1/messages",
            f'{{"model": "{MODEL}", "max_tokens": 2, "messages": [{{"role": "user", '
            f'"content": "x"}}], "tools": [{{"name": "f", "input_schema": {{"d": {DEEP}}}}}]}}',
        ),
        (
            "/v1/responses",
            f'{{"model": "{MODEL}", "input": "x", "tools": [{{"type": "function", "name": "f",'
            f' "parameters": {{"d": {DEEP}}}}}]}}',
        ),
    ],
)
def test_deeply_nested_bodies_are_400_not_500(
    dialect_stack: DialectStack, path: str, raw: str
) -> None:
    """A tool schema is free-form JSON: nesting that no parser should follow is refused cleanly."""
    resp = httpx.post(
        f"{dialect_stack.url}{path}",
        content=raw.encode(),
        headers={
            "x-api-key": dialect_stack.api_key,
            "Authorization": f"Bearer {dialect_stack.api_key}",
            "content-type": "application/json",
        },
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"]
