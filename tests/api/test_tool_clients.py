"""Tool calls, several choices and structured output, through clients nobody here wrote (issue 23).

A real control plane (uvicorn, SQLite) and a real runner with the embedded
SmolLM2 model under llama.cpp; the official ``openai`` SDK, LangChain's
``ChatOpenAI.bind_tools`` running a tool loop, and LiteLLM as a client. The
135M model is not trained for tools: ``tool_choice`` "required" or a named
function makes llama.cpp's tool grammar hold the call, so those are asserted
exactly; "auto" is only asserted to be well-formed either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness.processes import ControlPlaneProcess, RunnerProcess, tenant_records
from tests.security.rogue import RogueRunner

MODEL = "smollm2"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Stack:
    def __init__(self, cp: ControlPlaneProcess, key: str, url: str) -> None:
        self.cp, self.key, self.database_url = cp, key, url
        self.client = openai.OpenAI(base_url=f"{cp.url}/v1", api_key=key, max_retries=0)

    def records(self) -> list[dict]:
        return tenant_records(self.database_url, "default")

    def seen(self) -> set[str]:
        return {r["id"] for r in self.records()}

    def since(self, seen: set[str]) -> list[dict]:
        """Records written after ``seen`` was taken."""
        return [r for r in self.records() if r["id"] not in seen]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("tools")
    url = f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
    cp = ControlPlaneProcess(tmp / "cp", url, extra_env={"OUTPOST_MAX_CHOICES": "4"}).start()
    runner = RunnerProcess(cp, tmp / "runner", "tools")
    try:
        key = cp.api_key()
        runner.start()
        runner.wait_connected(key)
        yield Stack(cp, key, url)
    finally:
        runner.stop()
        cp.stop()


def _arguments(call: object) -> dict:
    args = json.loads(call.function.arguments)  # type: ignore[attr-defined]
    assert isinstance(args, dict)
    return args


# --- tool calls: the openai SDK ---------------------------------------------------------


def test_the_model_advertises_tools(stack: Stack) -> None:
    models = {m.id: m for m in stack.client.models.list().data}
    assert "tools" in models[MODEL].model_extra["endpoints"]  # type: ignore[index]


def test_tool_choice_required_returns_tool_calls(stack: Stack) -> None:
    """Parallel calls allowed (the default): the model may make several, each well-formed."""
    answer = stack.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=160
    )
    choice = answer.choices[0]
    calls = choice.message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    # This small model, free to call again, often does until its token cap: then the last
    # call may be cut short; every finished one is whole.
    assert choice.finish_reason in ("tool_calls", "length")
    finished = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    assert all(isinstance(_arguments(c).get("city"), str) for c in finished)
    assert answer.usage is not None and answer.usage.completion_tokens > 0


def test_a_named_tool_choice_calls_that_function_once(stack: Stack) -> None:
    answer = stack.client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        # Greedy: sampled, the small model once wrote two calls inside one <tool_call> block,
        # which the "</tool_call>" stop cannot cut (docs/api.md says so).
        temperature=0,
    )
    calls = answer.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_time" and "tz" in _arguments(calls[0])


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_streamed_tool_call_deltas_assemble_into_a_call(stack: Stack, choice: Any) -> None:
    before = stack.seen()
    stream = stack.client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME] if isinstance(choice, dict) else [WEATHER],
        tool_choice=choice,
        parallel_tool_calls=False,  # one call, then the end (the model would go on calling)
        max_tokens=80,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish, usage = None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert len(calls) == 1 and all(c["name"] == "get_weather" for c in calls.values())
    assert all("city" in json.loads(c["arguments"]) for c in calls.values())
    # Relayed and accounted: the record is priced with the usage the client saw.
    assert usage is not None and usage.completion_tokens > 0
    new = stack.since(before)
    assert [r["status"] for r in new] == ["ok"]
    assert new[0]["completion_tokens"] == usage.completion_tokens


def test_a_tool_result_in_a_follow_up_message_is_answered(stack: Stack) -> None:
    # Greedy and with room to finish the call: a call cut off by max_tokens is not JSON, and the
    # follow-up that sends it back is refused (the next test).
    first = stack.client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    assert first.choices[0].finish_reason == "tool_calls", first
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    follow_up = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    answer = stack.client.chat.completions.create(
        model=MODEL, messages=follow_up, tools=[WEATHER], tool_choice="none", max_tokens=30
    )
    message = answer.choices[0].message
    assert not message.tool_calls and message.content


def test_a_follow_up_with_a_cut_off_call_is_a_400_not_the_engines_500(stack: Stack) -> None:
    cut = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city'},
            }
        ],
    }
    follow_up = [*ASK, cut, {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    with pytest.raises(openai.BadRequestError) as refused:
        stack.client.chat.completions.create(
            model=MODEL, messages=follow_up, tools=[WEATHER], max_tokens=4
        )
    assert "arguments must be a JSON object" in str(refused.value)


def test_tool_choice_auto_is_well_formed_either_way(stack: Stack) -> None:
    answer = stack.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=40
    )
    choice = answer.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        assert all(c.function.name == "get_weather" for c in choice.message.tool_calls)
    else:
        assert choice.message.content


def test_response_format_json_schema_is_held(stack: Stack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a city in France as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
        max_tokens=60,
    )
    content = answer.choices[0].message.content or ""
    assert answer.choices[0].finish_reason == "stop", content
    parsed = json.loads(content)
    assert set(parsed) == {"city"} and isinstance(parsed["city"], str)


def test_response_format_json_object_is_json(stack: Stack) -> None:
    answer = stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object with a key 'ok'."}],
        response_format={"type": "json_object"},
        max_tokens=120,
    )
    choice = answer.choices[0]
    content = choice.message.content or ""
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: a prefix of a JSON object is all there is
        assert choice.finish_reason == "length" and content.lstrip().startswith("{")


# --- n > 1 -----------------------------------------------------------------------------


def test_n_choices_are_served_and_each_is_recorded(stack: Stack) -> None:
    before = stack.seen()
    answer = stack.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=3, max_tokens=8
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content for c in answer.choices)
    new = stack.since(before)
    assert len(new) == 3 and {r["status"] for r in new} == {"ok"}
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(r["completion_tokens"] for r in new)
    assert answer.usage.prompt_tokens == sum(r["prompt_tokens"] for r in new)


def test_n_choices_stream_with_an_index_each(stack: Stack) -> None:
    before = stack.seen()
    stream = stack.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        n=2,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, finished, usage, ids = {0: "", 1: ""}, set(), None, set()
    for chunk in stream:
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1} and all(texts.values()) and len(ids) == 1
    new = stack.since(before)
    assert len(new) == 2 and {r["status"] for r in new} == {"ok"}
    assert usage is not None
    assert usage.completion_tokens == sum(r["completion_tokens"] for r in new)


def test_n_choices_with_tools(stack: Stack) -> None:
    answer = stack.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", n=2, max_tokens=60
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.tool_calls for c in answer.choices)


def test_completions_best_of_equal_to_n(stack: Stack) -> None:
    answer = stack.client.completions.create(
        model=MODEL, prompt="Once upon a time", n=2, best_of=2, max_tokens=5
    )
    assert [c.index for c in answer.choices] == [0, 1]


# --- what the schema allows but nobody meant -------------------------------------------


def _refused(stack: Stack, **fields: object) -> dict:
    response = httpx.post(
        f"{stack.cp.url}/v1/chat/completions",
        json={"model": MODEL, "messages": ASK, "max_tokens": 5, **fields},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def _tool(name: str, parameters: object = None) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {}}}


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"tool_choice": "required"},
        {"tools": [_tool(f"t{i}") for i in range(129)]},
        {"tools": [_tool("big", {"type": "object", "description": "x" * 70_000})]},
        {"tools": [_tool("bad name")]},
        {"tools": [{"type": "retrieval"}]},
        {"tools": [WEATHER], "tool_choice": "sometimes"},
        {"parallel_tool_calls": "yes"},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
        {"response_format": {"type": "yaml"}},
        {"messages": [*ASK, {"role": "tool", "content": "21C"}]},
        {"n": 5},
        {"n": 0},
    ],
    ids=[
        "named-unknown",
        "choice-without-tools",
        "too-many-tools",
        "schema-too-large",
        "bad-name",
        "not-a-function",
        "unknown-choice",
        "parallel-not-bool",
        "json-schema-missing",
        "json-schema-not-object",
        "unknown-format",
        "tool-turn-without-id",
        "n-over-limit",
        "n-zero",
    ],
)
def test_bad_tool_and_choice_fields_are_400s(stack: Stack, fields: dict) -> None:
    before = stack.seen()
    _refused(stack, **fields)
    assert not stack.since(before)  # refused before admission: nothing ran


def test_n_over_the_limit_names_the_setting(stack: Stack) -> None:
    error = _refused(stack, n=5)
    assert error["code"] == "too_many_choices" and error["param"] == "n"


def test_best_of_other_than_n_is_refused(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.cp.url}/v1/completions",
        json={"model": MODEL, "prompt": "x", "best_of": 3, "n": 2, "max_tokens": 3},
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "best_of_unsupported"


def test_a_model_without_tool_support_answers_400_not_text(stack: Stack) -> None:
    """A runner whose model does not advertise "tools" (a rogue speaking the real protocol,
    as an engine without tool support would advertise): tools are refused, never dropped."""
    rogue = RogueRunner(stack.cp, "default", "no-tools-model")
    ws = rogue.connect()
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            stack.client.chat.completions.create(
                model="no-tools-model", messages=ASK, tools=[WEATHER], max_tokens=5
            )
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "tools_unsupported"
        assert error["param"] == "tools"
    finally:
        ws.close()


# --- LangChain and LiteLLM --------------------------------------------------------------


def test_langchain_bind_tools_runs_a_tool_loop(stack: Stack) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    seen: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather of a city."""
        seen.append(city)
        return json.dumps({"city": city, "temp_c": 21})

    llm = ChatOpenAI(
        model=MODEL, base_url=f"{stack.cp.url}/v1", api_key=stack.key, max_tokens=60, max_retries=0
    )
    messages: list = [HumanMessage("What is the weather in Paris?")]
    ai = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "get_weather"
    messages.append(ai)
    for call in ai.tool_calls:
        messages.append(ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"]))
    final = llm.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert seen and not final.tool_calls and final.content


def test_litellm_as_a_client(stack: Stack) -> None:
    import litellm

    answer = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=f"{stack.cp.url}/v1",
        api_key=stack.key,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    plain = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=f"{stack.cp.url}/v1",
        api_key=stack.key,
        messages=[{"role": "user", "content": "Hi"}],
        n=2,
        max_tokens=5,
    )
    assert len(plain.choices) == 2
