"""A ``POST /v1/messages`` request (Anthropic Messages), checked and bounded, as a chat request.

Content blocks map onto chat messages: ``text`` blocks are joined, an assistant's
``tool_use`` blocks become its ``tool_calls``, and a user's ``tool_result`` blocks
become ``tool`` messages ahead of its text. Images, documents, extended thinking and
Anthropic's server tools are refused with a 400 that names the block or field,
never dropped (docs/api.md "Anthropic Messages").
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.protocol import _Encodable

__all__ = ["MessagesRequest", "to_chat"]

_Int = Annotated[int, Field(strict=True)]
_Bool = Annotated[bool, Field(strict=True)]
_Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_Id = Annotated[str, Field(min_length=1, max_length=128)]
MAX_MESSAGES = 4096  # the chat surface's bound
MAX_BLOCKS = 256
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 16


class _Strict(BaseModel):
    # cache_control is accepted on every block, without effect: prompt caching is the engine's.
    model_config = ConfigDict(extra="forbid")

    cache_control: dict[str, Any] | None = None


class TextBlock(_Strict):
    type: Literal["text"]
    text: str
    citations: list[Any] | None = Field(default=None, max_length=0)


class ToolUseBlock(_Strict):
    type: Literal["tool_use"]
    id: _Id
    name: _Name
    input: dict[str, Any]


class ToolResultBlock(_Strict):
    type: Literal["tool_result"]
    tool_use_id: _Id
    content: str | list[TextBlock] | None = Field(default=None, max_length=MAX_BLOCKS)
    is_error: _Bool | None = None


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[Block] = Field(max_length=MAX_BLOCKS)


class Tool(_Strict):
    type: Literal["custom"] | None = None
    name: _Name
    description: str | None = Field(default=None, max_length=8192)
    input_schema: dict[str, Any]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: _Name | None = None
    disable_parallel_tool_use: _Bool | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=256)


class MessagesRequest(_Encodable):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: _Int = Field(ge=1)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = Field(default=None)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    stop_sequences: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES
    )
    temperature: _Float | None = Field(default=None, ge=0, le=1)
    top_p: _Float | None = Field(default=None, ge=0, le=1)
    top_k: _Int | None = Field(default=None, ge=0, le=100_000)
    stream: _Bool = False
    metadata: Metadata | None = None
    # Accepted without effect: Outpost has one tier, and prompt caching is the engine's own.
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: dict[str, Any] | None = None


def _text(blocks: str | list[TextBlock] | None) -> str:
    if blocks is None:
        return ""
    return blocks if isinstance(blocks, str) else "".join(b.text for b in blocks)


def _user(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            # Chat templates have no error flag on a tool result: the text says so.
            content = _text(block.content)
            if block.is_error:
                content = f"Error: {content}"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        else:
            raise ApiError(
                400,
                "A user message cannot hold a tool_use block; tool_use belongs to the assistant.",
                code="invalid_request",
                param="messages",
            )
    if texts:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant(message: Message) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts, calls = [], []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments},
                }
            )
        else:
            raise ApiError(
                400,
                "An assistant message cannot hold a tool_result block; it belongs to the user.",
                code="invalid_request",
                param="messages",
            )
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        if choice.name is None:
            raise ApiError(
                400,
                "tool_choice of type tool needs `name`.",
                code="invalid_request",
                param="tool_choice.name",
            )
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def to_chat(request: MessagesRequest) -> dict[str, Any]:
    """The chat-completions body that asks the engine the same question."""
    messages: list[dict[str, Any]] = []
    if system := _text(request.system):
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if message.role == "user":
            messages += _user(message)
        else:
            messages.append(_assistant(message))
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "parameters": t.input_schema,
                    **({"description": t.description} if t.description is not None else {}),
                },
            }
            for t in request.tools
        ]
    if request.tool_choice is not None:
        if request.tool_choice.type != "none" and not request.tools:
            raise ApiError(
                400, "tool_choice needs `tools`.", code="invalid_request", param="tool_choice"
            )
        body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    for name, value in (
        ("stop", request.stop_sequences),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", request.top_k),  # a sampling field llama.cpp and vLLM both read
        ("user", request.metadata.user_id if request.metadata else None),
    ):
        if value is not None:
            body[name] = value
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body
