"""POST /v1/responses with the official ``openai`` client, against a real stack and the embedded
model.

The request goes the chat-completions way (routing, fair queue, budgets, records); these tests
check what a Responses client sees and that the request is accounted like any other.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from harness.processes import tenant_records, wait_until
from tests.dialects.conftest import MODEL, DialectStack


def client(stack: DialectStack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key or stack.api_key, max_retries=0)


def _post(stack: DialectStack, body: object, key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {key or stack.api_key}"},
        timeout=120,
    )


def _record(stack: DialectStack, tenant: str, request_id: str) -> dict:
    rows: list[dict] = []

    def written() -> bool:
        rows[:] = [r for r in tenant_records(stack.database_url, tenant) if r["id"] == request_id]
        return bool(rows)

    wait_until(written, 10, f"the record of {request_id}")
    return rows[0]


def test_text_response_is_accounted_for_the_tenant(dialect_stack: DialectStack) -> None:
    _, key = dialect_stack.key("default", "responses-text")
    raw = client(dialect_stack, key).responses.with_raw_response.create(
        model=MODEL,
        instructions="You are terse.",
        input="Say hello.",
        max_output_tokens=8,
        temperature=0,
    )
    resp = raw.parse()
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.status in ("completed", "incomplete") and resp.model == MODEL
    assert resp.output_text and resp.output[0].type == "message"
    assert resp.usage is not None and resp.usage.input_tokens > 0
    assert 0 < resp.usage.output_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.store is False and resp.instructions == "You are terse."
    record = _record(dialect_stack, "default", raw.headers["x-request-id"])
    assert record["status"] == "ok" and record["runner_id"] == dialect_stack.runner_id
    assert record["prompt_tokens"] == resp.usage.input_tokens
    assert record["completion_tokens"] == resp.usage.output_tokens


def test_token_cap_makes_an_incomplete_response(dialect_stack: DialectStack) -> None:
    resp = client(dialect_stack).responses.create(
        model=MODEL, input="Count from one to one hundred.", max_output_tokens=3, temperature=0
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 3


def test_items_input_with_history(dialect_stack: DialectStack) -> None:
    resp = client(dialect_stack).responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Blue.", "annotations": []}],
            },
            {"role": "user", "content": "Another one."},
        ],
        max_output_tokens=6,
        temperature=0,
    )
    assert resp.output_text and resp.usage is not None and resp.usage.input_tokens > 10


def test_streamed_response_events(dialect_stack: DialectStack) -> None:
    stream = client(dialect_stack).responses.create(
        model=MODEL,
        input="Count from one to ten.",
        max_output_tokens=12,
        temperature=0,
        stream=True,
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    for expected in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected in types, expected
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert types.count("response.output_text.delta") > 2, "expected token-by-token deltas"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


def test_stream_helper_accumulates_the_same_text(dialect_stack: DialectStack) -> None:
    # The SDK's own accumulator checks that items, parts and deltas line up. Its final response
    # needs response.completed, so the answer must end before the cap.
    with client(dialect_stack).responses.stream(
        model=MODEL, input="Say hi.", max_output_tokens=64, temperature=0
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == text and text


def test_function_tools_and_tool_outputs_are_accepted(dialect_stack: DialectStack) -> None:
    """A tool loop's second turn: the function call and its output go back as items."""
    weather = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    resp = client(dialect_stack).responses.create(
        model=MODEL,
        tools=[weather],  # type: ignore[list-item]
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C."},
        ],
        max_output_tokens=12,
        temperature=0,
    )
    assert resp.status in ("completed", "incomplete")
    assert resp.tools and resp.tools[0].type == "function"
    assert resp.output and resp.usage is not None and resp.usage.input_tokens > 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_abc"}, "previous_response_id"),
    ],
)
def test_stored_state_is_refused(dialect_stack: DialectStack, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(dialect_stack).responses.create(model=MODEL, input="hi", **extra)
    err = info.value.response.json()["error"]
    assert err["param"] == param and err["code"] == "unsupported_parameter"
    assert "keeps no" in err["message"] or "stores no" in err["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": "hi", "tools": [{"type": "function", "name": "bad name!"}]}, "tools.0.name"),
        ({"input": "hi", "frobnicate": 1}, "frobnicate"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": "x"}] * 4097}, "input"),
        ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0"),
        # Bounds the chat path holds, named by this dialect's fields.
        (
            {
                "input": "hi",
                "tools": [{"type": "function", "name": "f", "parameters": {"d": "x" * 70_000}}],
            },
            "tools.0.parameters",
        ),
        (
            {
                "input": "hi",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "function", "name": "g"},
            },
            "tool_choice",
        ),
    ],
)
def test_malformed_or_oversize_input_is_a_400_envelope(
    dialect_stack: DialectStack, body: dict, param: str
) -> None:
    resp = _post(dialect_stack, {"model": MODEL, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    # A check across fields (a named choice among the tools) names them in the message.
    assert (err["param"] or "").startswith(param) or param in err["message"], err


def test_unknown_model_is_404(dialect_stack: DialectStack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(dialect_stack).responses.create(model="no-such-model", input="hi")
    assert info.value.response.json()["error"]["code"] == "model_not_found"


def test_other_tenant_cannot_use_a_model_outside_its_pools(dialect_stack: DialectStack) -> None:
    """The runner is in the default tenant's pool, granted to nobody: an outsider's key is refused
    through this door exactly as through chat completions, and nothing reaches the runner."""
    _, outsider = dialect_stack.key("outsider", "k")
    chat = httpx.post(
        f"{dialect_stack.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {outsider}"},
        timeout=60,
    )
    door = _post(dialect_stack, {"model": MODEL, "input": "hi", "max_output_tokens": 2}, outsider)
    assert chat.status_code >= 400 and door.status_code == chat.status_code
    assert door.json()["error"]["code"] == chat.json()["error"]["code"]
    # A stream has its headers at once here: the refusal is its one event, in this dialect.
    streamed = _post(dialect_stack, {"model": MODEL, "input": "hi", "stream": True}, outsider)
    assert streamed.status_code == 200
    events = [e for e in streamed.text.split("\n\n") if e.startswith("event:")]
    assert [e.split("\n")[0] for e in events][-1] == "event: error"
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["code"] == chat.json()["error"]["code"] and error["message"]
    assert "response.completed" not in streamed.text and "output_text" not in streamed.text
    with pytest.raises(openai.APIError):  # the SDK raises on the error event
        list(client(dialect_stack, outsider).responses.create(model=MODEL, input="hi", stream=True))
    # Each refusal is recorded as chat's is, and none reached a runner.
    wait_until(
        lambda: len(tenant_records(dialect_stack.database_url, "outsider")) == 4, 10, "4 records"
    )
    records = tenant_records(dialect_stack.database_url, "outsider")
    assert all(r["runner_id"] is None and r["status"] != "ok" for r in records), records


def test_keep_alives_reach_the_client_and_the_sdk_skips_them(dialect_stack: DialectStack) -> None:
    body = {"model": MODEL, "input": "Count to five.", "max_output_tokens": 8, "stream": True}
    with httpx.stream(
        "POST",
        f"{dialect_stack.url}/v1/responses",
        json=body,
        headers={"Authorization": f"Bearer {dialect_stack.api_key}"},
        timeout=60,
    ) as resp:
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert text.startswith("event: response.created")
    assert "\n\n: keep-alive\n\n" in text  # the comments, as the chat path sent them
    assert text.rstrip().split("\n\n")[-1].startswith("event: response.")


def test_a_spent_budget_stops_the_key(dialect_stack: DialectStack) -> None:
    _, admin = dialect_stack.key("default", "responses-budget-admin", admin=True)
    capped_id, capped = dialect_stack.key("default", "responses-capped")
    created = httpx.post(
        f"{dialect_stack.url}/api/budgets",
        json={"api_key_id": capped_id, "period": "month", "amount_usd": 0},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    with pytest.raises(openai.RateLimitError) as info:
        client(dialect_stack, capped).responses.create(model=MODEL, input="hi")
    assert info.value.response.json()["error"]["code"] == "budget_exceeded"
    ok = client(dialect_stack, admin).responses.create(model=MODEL, input="hi", max_output_tokens=2)
    assert ok.status in ("completed", "incomplete")


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather of a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_required_tool_choice_gives_a_function_call_item(dialect_stack: DialectStack) -> None:
    resp = client(dialect_stack).responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,  # one call, then the end (this model would go on calling)
        max_output_tokens=80,
        temperature=0,
    )
    calls = [o for o in resp.output if o.type == "function_call"]
    assert calls, resp.output
    assert calls[0].name == "get_weather" and calls[0].call_id and calls[0].id
    assert isinstance(json.loads(calls[0].arguments).get("city"), str)
    assert resp.status == "completed" and len(calls) == 1


def test_streamed_function_call_arguments(dialect_stack: DialectStack) -> None:
    with client(dialect_stack).responses.stream(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=80,
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    calls = [o for o in final.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert deltas and calls[0].arguments == deltas and done[0].arguments == deltas
    assert isinstance(json.loads(deltas), dict)


def test_stored_responses_cannot_be_read(dialect_stack: DialectStack) -> None:
    """Nothing is stored, so the routes that read a stored response are not served."""
    resp = httpx.get(
        f"{dialect_stack.url}/v1/responses/resp_0123",
        headers={"Authorization": f"Bearer {dialect_stack.api_key}"},
        timeout=30,
    )
    assert resp.status_code == 404 and resp.json()["error"]["message"]


def test_langchain_on_the_responses_api(dialect_stack: DialectStack) -> None:
    """LangChain's ChatOpenAI speaking the Responses API (use_responses_api): text and a tool call
    from bind_tools, as an agent's loop starts."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{dialect_stack.url}/v1",
        api_key=dialect_stack.api_key,  # type: ignore[arg-type]
        model=MODEL,
        use_responses_api=True,
        max_retries=0,
        temperature=0,
        max_completion_tokens=80,
    )
    assert llm.invoke("Say hello.").text

    def get_weather(city: str) -> str:
        """The current weather of a city."""
        return "sunny"

    bound = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False)
    answer = bound.invoke("What is the weather in Paris?")
    assert [c["name"] for c in answer.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    assert isinstance(answer.tool_calls[0]["args"].get("city"), str)  # type: ignore[attr-defined]
