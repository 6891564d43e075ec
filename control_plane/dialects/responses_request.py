"""A ``POST /v1/responses`` request (OpenAI Responses API), checked and bounded, as a chat request.

Fields Outpost cannot honour are refused with a 400 that names them, never
dropped in silence: a client that asks for stored state (``store``,
``previous_response_id``), built-in tools (web search, files) or images learns so
at once (docs/api.md "Responses API").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.protocol import _Encodable

__all__ = ["ResponsesRequest", "to_chat"]

_Int = Annotated[int, Field(strict=True)]
_Bool = Annotated[bool, Field(strict=True)]
_Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: Function names as the engines' chat templates and OpenAI accept them.
_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
_CallId = Annotated[str, Field(min_length=1, max_length=128)]
MAX_ITEMS = 4096  # the chat surface's bound on messages
MAX_TOOLS = 128
MAX_PARTS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    # Earlier assistant turns come back as output_text; images and files are not supported.
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = Field(default=None, max_length=0)
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart] = Field(max_length=MAX_PARTS)
    id: str | None = Field(default=None, max_length=128)
    status: str | None = Field(default=None, max_length=32)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: _CallId
    name: _Name
    arguments: str
    id: str | None = Field(default=None, max_length=128)
    status: str | None = Field(default=None, max_length=32)


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: _CallId
    output: str | list[TextPart] = Field(max_length=MAX_PARTS)
    id: str | None = Field(default=None, max_length=128)
    status: str | None = Field(default=None, max_length=32)


def _item_kind(value: Any) -> str:
    # A message item may leave out its type (EasyInputMessage).
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "")
    return str(kind)


Item = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: _Name
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: _Bool | None = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: _Name


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = Field(default=None, max_length=8192)
    strict: _Bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Encodable):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[Item] = Field(max_length=MAX_ITEMS)
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: _Bool | None = None
    max_output_tokens: _Int | None = Field(default=None, ge=1)
    temperature: _Float | None = Field(default=None, ge=0, le=2)
    top_p: _Float | None = Field(default=None, ge=0, le=1)
    stream: _Bool = False
    # The control plane keeps no content: nothing is stored, so nothing can be continued.
    store: _Bool | None = None
    previous_response_id: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    user: str | None = Field(default=None, max_length=256)
    text: TextConfig | None = None
    # Accepted without effect: their only values here are what Outpost does anyway.
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = Field(default=None, max_length=0)
    service_tier: Literal["auto", "default"] | None = None
    stream_options: dict[str, _Bool] | None = Field(default=None, max_length=4)

    def check_supported(self) -> None:
        """400 for what Outpost cannot do: keep a response, continue one, run in the background."""
        if self.store:
            raise ApiError(
                400,
                "store=true is not supported: Outpost keeps no request or response content. "
                "Send the conversation's items in `input` instead.",
                code="unsupported_parameter",
                param="store",
            )
        if self.previous_response_id is not None:
            raise ApiError(
                400,
                "previous_response_id is not supported: Outpost stores no responses "
                "(store defaults to false). Send the earlier items in `input` instead.",
                code="unsupported_parameter",
                param="previous_response_id",
            )
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ApiError(
                400, "tool_choice needs `tools`.", code="invalid_request", param="tool_choice"
            )


def _text(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)


def _messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    items = (
        [MessageItem(role="user", content=request.input)]
        if isinstance(request.input, str)
        else request.input
    )
    for item in items:
        if isinstance(item, MessageItem):
            # Chat templates know "system"; OpenAI's "developer" is its newer name.
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)}
            )
    if not messages:
        raise ApiError(400, "input must not be empty.", code="invalid_request", param="input")
    return messages


def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None or not fmt.name:
        raise ApiError(
            400,
            "text.format of type json_schema needs `name` and `schema`.",
            code="invalid_request",
            param="text.format",
        )
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description is not None:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def to_chat(request: ResponsesRequest) -> dict[str, Any]:
    """The chat-completions body that asks the engine the same question."""
    request.check_supported()
    body: dict[str, Any] = {"model": request.model, "messages": _messages(request)}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": t.model_dump(exclude={"type"}, exclude_none=True),
            }
            for t in request.tools
        ]
    if isinstance(request.tool_choice, FunctionChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
    elif request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    for name, value in (
        ("parallel_tool_calls", request.parallel_tool_calls),
        ("max_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("user", request.user),
        ("response_format", _response_format(request.text)),
    ):
        if value is not None:
            body[name] = value
    if request.stream:
        # The Responses stream ends with usage; the chat stream gives it only when asked.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
