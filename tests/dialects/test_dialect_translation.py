"""The dialects' translation, both ways, at its seams: requests into chat bodies, and a runner's
chat answer (untrusted) into Responses events and Anthropic events.

The streamed cases feed :class:`Translation` what the chat path's streamed response sends, SSE
text in arbitrary frames (the one input of the translation; the end-to-end tests drive it through
the real relay). What
comes out is parsed with the ``openai`` and ``anthropic`` packages' own event types, so a shape
the real clients would reject fails here.
"""

from __future__ import annotations

import json

import pytest
from anthropic.types import RawMessageStreamEvent
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from outpost.control_plane.dialects.chat import parse_completion
from outpost.control_plane.dialects.messages import MessagesStream, message_object
from outpost.control_plane.dialects.messages_request import MessagesRequest
from outpost.control_plane.dialects.messages_request import to_chat as messages_to_chat
from outpost.control_plane.dialects.responses import ResponsesStream, response_object
from outpost.control_plane.dialects.responses_request import ResponsesRequest
from outpost.control_plane.dialects.responses_request import to_chat as responses_to_chat
from outpost.control_plane.dialects.stream import Dialect, Translation
from outpost.control_plane.errors import ApiError

RESPONSES_EVENT: TypeAdapter[object] = TypeAdapter(ResponseStreamEvent)
MESSAGES_EVENT: TypeAdapter[object] = TypeAdapter(RawMessageStreamEvent)


def _chunk(delta: dict | None = None, finish: str | None = None, **extra: object) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return "data: " + json.dumps({"choices": choices, **extra}) + "\n\n"


def _call(index: int, args: str, name: str | None = None, id: str | None = None) -> dict:
    fn: dict = {"arguments": args}
    if name is not None:
        fn["name"] = name
    call: dict = {"index": index, "function": fn}
    if id is not None:
        call["id"] = id
    return {"tool_calls": [call]}


TEXT_THEN_TOOL = [
    ": keep-alive\n\n",
    _chunk({"role": "assistant", "content": "Let"}),
    _chunk({"content": " me"}),
    _chunk(_call(0, '{"city"', "get_weather", "call_a")),
    _chunk(_call(0, ': "Paris"}')),
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 7}),
    "data: [DONE]\n\n",
]


def _frames(frames: list[str], cut: int | None) -> list[str]:
    """The relay's body as the chat path sends it: text frames, cut anywhere."""
    text = "".join(frames)
    return [text[i : i + cut] for i in range(0, len(text), cut)] if cut else list(frames)


def _translate(dialect: Dialect, frames: list[str], cut: int | None) -> str:
    translation = Translation(dialect)
    parts = _frames(frames, cut)
    return "".join(translation.feed(f, final=i == len(parts) - 1) for i, f in enumerate(parts))


def _sse(text: str) -> list[tuple[str | None, dict | None, str]]:
    out = []
    for block in text.strip("\n").split("\n\n"):
        event, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        out.append((event, data, block))
    return out


def _responses(frames: list[str], cut: int | None = None, **request: object) -> list:
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", **request})
    return _sse(_translate(ResponsesStream(body), frames, cut))


def _messages(frames: list[str], cut: int | None = None) -> list:
    return _sse(_translate(MessagesStream("m"), frames, cut))


@pytest.mark.parametrize("cut", [None, 1, 7])
def test_responses_stream_of_text_and_a_tool_call(cut: int | None) -> None:
    events = _responses(TEXT_THEN_TOOL, cut)
    # A comment is handed on as it came, for a proxy in front.
    assert [raw for name, _, raw in events if name is None] == [": keep-alive"]
    typed = [RESPONSES_EVENT.validate_python(data) for name, data, _ in events if name]
    kinds = [e.type for e in typed]  # type: ignore[attr-defined]
    assert [name for name, _, _ in events if name] == kinds
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in typed] == list(range(len(typed)))  # type: ignore[attr-defined]
    final = typed[-1].response  # type: ignore[attr-defined]
    assert final.output_text == "Let me"
    call = final.output[1]
    assert (call.type, call.name, call.call_id) == ("function_call", "get_weather", "call_a")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 7)


@pytest.mark.parametrize("cut", [None, 3])
def test_messages_stream_of_text_and_a_tool_call(cut: int | None) -> None:
    events = _messages(TEXT_THEN_TOOL, cut)
    assert [raw for name, _, raw in events if name is None] == [": keep-alive"]
    typed = [MESSAGES_EVENT.validate_python(data) for name, data, _ in events if name]
    kinds = [e.type for e in typed]  # type: ignore[attr-defined]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    tool_start = typed[5]
    assert tool_start.content_block.type == "tool_use"  # type: ignore[attr-defined]
    assert tool_start.index == 1 and tool_start.content_block.id == "call_a"  # type: ignore[attr-defined]
    partial = "".join(e.delta.partial_json for e in typed[6:8])  # type: ignore[attr-defined]
    assert json.loads(partial) == {"city": "Paris"}
    delta = typed[-2]
    assert delta.delta.stop_reason == "tool_use"  # type: ignore[attr-defined]
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (11, 7)  # type: ignore[attr-defined]


ROGUE_STREAMS = {
    "not json": [_chunk({"content": "a"}), "data: {oops\n\n", _chunk({"content": "b"})],
    "not an object": [_chunk({"content": "a"}), "data: [1, 2]\n\n"],
    "tool index out of range": [_chunk(_call(10**6, "{}", "f"))],
    "negative tool index": [_chunk(_call(-1, "{}", "f"))],
    "tool call not an object": [_chunk({"tool_calls": ["x"]})],
    "tool_calls not a list": [_chunk({"tool_calls": {"index": 0}})],
    "engine error event": [
        _chunk({"content": "a"}),
        'data: {"error": {"message": "engine died", "type": "server_error"}}\n\n',
    ],
}


@pytest.mark.parametrize("name", sorted(ROGUE_STREAMS))
def test_a_rogue_stream_ends_in_an_error_event(name: str) -> None:
    frames = [*ROGUE_STREAMS[name], _chunk({"content": "after"}), "data: [DONE]\n\n"]
    events = _responses(frames)
    assert events[-1][0] == "error" and events[-1][1]["message"]  # type: ignore[index]
    RESPONSES_EVENT.validate_python(events[-1][1])
    assert not any(name == "response.completed" for name, _, _ in events)
    assert not any('"after"' in raw for _, _, raw in events)  # nothing relayed after the fault
    events = _messages(frames)
    assert events[-1][0] == "error" and events[-1][1]["error"]["message"]  # type: ignore[index]
    assert not any(name == "message_stop" for name, _, _ in events)


def test_interleaved_tool_arguments_end_an_anthropic_stream() -> None:
    """Anthropic's blocks are sequential: arguments for a stopped block cannot be sent. The
    Responses stream, whose items are addressed by index, carries them."""
    frames = [
        _chunk(_call(0, '{"a"', "f", "c0")),
        _chunk(_call(1, "{}", "g", "c1")),
        _chunk(_call(0, ": 1}")),
        _chunk({}, "tool_calls"),
    ]
    events = _messages(frames)
    assert events[-1][0] == "error" and "interleaved" in events[-1][1]["error"]["message"]  # type: ignore[index]
    events = _responses(frames)
    final = RESPONSES_EVENT.validate_python(events[-1][1]).response  # type: ignore[attr-defined]
    assert [json.loads(o.arguments) for o in final.output] == [{"a": 1}, {}]


def test_usage_a_runner_reports_is_bounded() -> None:
    frames = [
        _chunk({"content": "x"}, "stop"),
        _chunk(None, usage={"prompt_tokens": 10**30, "completion_tokens": -5}),
    ]
    events = _responses(frames)
    usage = RESPONSES_EVENT.validate_python(events[-1][1]).response.usage  # type: ignore[attr-defined]
    assert usage.input_tokens == 2**31 - 1 and usage.output_tokens == 0


def test_a_whole_answer_with_tool_calls() -> None:
    body = json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x": 1}'},
                            },
                            {
                                "id": "c2",
                                "type": "function",
                                "function": {"name": "g", "arguments": "not json"},
                            },
                        ],
                    },
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }
    )
    answer = parse_completion(body)
    request = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    response = response_object(request, answer)
    assert [o.type for o in response.output] == ["function_call", "function_call"]
    assert response.status == "completed" and response.usage.total_tokens == 7  # type: ignore[union-attr]
    message = message_object("m", answer)
    assert message.stop_reason == "tool_use"
    # Arguments that are not a JSON object are handed over as text, not lost.
    assert [b.input for b in message.content] == [{"x": 1}, {"_raw_arguments": "not json"}]  # type: ignore[union-attr]


@pytest.mark.parametrize("body", ["{}", "[]", '{"choices": [1]}', '{"choices": [{"message": 1}]}'])
def test_a_malformed_whole_answer_is_refused(body: str) -> None:
    with pytest.raises(ValueError):
        parse_completion(body)


def test_responses_items_become_chat_messages() -> None:
    request = ResponsesRequest.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "a", "output": "sunny"},
                {"type": "function_call_output", "call_id": "b", "output": "noon"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
            "max_output_tokens": 9,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {}}},
            "stream": True,
        }
    )
    chat = responses_to_chat(request)
    roles = [m["role"] for m in chat["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in chat["messages"][3]["tool_calls"]] == ["a", "b"]  # one turn
    assert chat["messages"][4] == {"role": "tool", "tool_call_id": "a", "content": "sunny"}
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat["parallel_tool_calls"] is False and chat["max_tokens"] == 9
    assert chat["response_format"]["json_schema"]["name"] == "out"
    assert chat["stream_options"] == {"include_usage": True}


def test_anthropic_blocks_become_chat_messages() -> None:
    request = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"c": "é"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "boom",
                            "is_error": True,
                        },
                        {"type": "text", "text": "And?"},
                    ],
                },
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"],
            "top_k": 3,
            "metadata": {"user_id": "u1"},
        }
    )
    chat = messages_to_chat(request)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool", "user"]
    call = chat["messages"][2]["tool_calls"][0]
    assert call["id"] == "t1" and json.loads(call["function"]["arguments"]) == {"c": "é"}
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and chat["top_k"] == 3 and chat["user"] == "u1"
    assert "stream" not in chat


def test_a_named_anthropic_tool_choice_needs_a_name() -> None:
    request = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {}}],
            "tool_choice": {"type": "tool"},
        }
    )
    with pytest.raises(ApiError) as info:
        messages_to_chat(request)
    assert info.value.status == 400 and info.value.param == "tool_choice.name"
