"""A chat answer as an Anthropic ``Message``, whole or as its stream of events; errors in its shape.

The wire shapes are the ``anthropic`` package's own types (``anthropic.types``). A
streamed message is ``message_start``, then content blocks one after another
(``content_block_start``, deltas, ``content_block_stop``: a text block, then one
``tool_use`` block per tool call), ``message_delta`` with the stop reason and usage,
and ``message_stop``. The input token count is only known at the end of a chat
stream, so ``message_start`` says 0 and ``message_delta`` carries the count (the
``anthropic`` SDK's accumulator takes it from there).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.raw_message_delta_event import Delta
from pydantic import BaseModel

from outpost.control_plane.dialects import chat
from outpost.control_plane.dialects.chat import ChatAnswer, Piece, ToolCall, new_id
from outpost.control_plane.errors import ApiError

__all__ = ["MessagesStream", "anthropic_type", "error_body", "error_event", "message_object"]

StopReason = Literal["end_turn", "max_tokens", "tool_use"]

#: Anthropic's error type for each HTTP status Outpost answers.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


#: Anthropic's error type for an OpenAI envelope's type (errors the chat path sends in-stream).
_FROM_OPENAI_TYPES = {
    "server_error": "api_error",
    "service_unavailable": "overloaded_error",
    "budget_exceeded": "rate_limit_error",
    "client_disconnected": "api_error",
}


#: ... and for the codes whose HTTP status (lost once a stream has begun) says more than the type.
_FROM_OPENAI_CODES = {
    "model_not_found": "not_found_error",
    "invalid_api_key": "authentication_error",
    "rate_limit_exceeded": "rate_limit_error",
    "budget_exceeded": "rate_limit_error",
}


def anthropic_type(openai_type: str, code: str | None = None) -> str:
    if code is not None and code in _FROM_OPENAI_CODES:
        return _FROM_OPENAI_CODES[code]
    return _FROM_OPENAI_TYPES.get(openai_type, openai_type)


def error_body(error: ApiError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, Anthropic's envelope."""
    kind = _ERROR_TYPES.get(error.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_event(message: str, kind: str = "api_error") -> str:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return f"event: error\ndata: {json.dumps(body)}\n\n"


def _stop_reason(reason: str | None, called: bool) -> StopReason:
    if reason == "length":
        return "max_tokens"
    if called or reason == "tool_calls":
        return "tool_use"
    return "end_turn"


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as ``input``. A model may write arguments that are not a JSON
    object; they are handed over as text under ``_raw_arguments`` rather than lost."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def _tool_block(call: ToolCall) -> ToolUseBlock:
    return ToolUseBlock(type="tool_use", id=call.id, name=call.name, input=_input(call.arguments))


def message_object(model: str, answer: ChatAnswer) -> Message:
    content: list[TextBlock | ToolUseBlock] = []
    if answer.text or not answer.tool_calls:
        content.append(TextBlock(type="text", text=answer.text))
    content += [_tool_block(c) for c in answer.tool_calls]
    return Message(
        id=new_id("msg"),
        type="message",
        role="assistant",
        model=model,
        content=content,
        stop_reason=_stop_reason(answer.finish_reason, bool(answer.tool_calls)),
        stop_sequence=None,
        usage=Usage(input_tokens=answer.prompt_tokens, output_tokens=answer.completion_tokens),
    )


def _sse(event: BaseModel) -> str:
    data = event.model_dump_json(exclude_unset=True)
    return f"event: {getattr(event, 'type')}\ndata: {data}\n\n"


class MessagesStream:
    """Translates the pieces of one streamed chat answer into Messages events, in order.

    Blocks are sent one after another, as Anthropic does: a block is stopped when the
    next begins. Engines stream one tool call after another; a delta for a tool call
    whose block is already stopped is a malformed answer: ``on`` raises ``ValueError`` and the
    stream ends with an error event (:class:`~control_plane.dialects.stream.Translation`).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.blocks = 0  # content blocks begun
        self.open: int | None = None  # the index of the block still open
        self.kind: Literal["text", "tool"] | None = None
        self.tools: dict[int, int] = {}  # chat tool index -> block index
        self.finish_reason: str | None = None
        self.usage = (0, 0)

    def start(self) -> list[str]:
        start = Message(
            id=new_id("msg"),
            type="message",
            role="assistant",
            model=self.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(input_tokens=0, output_tokens=0),
        )
        return [_sse(RawMessageStartEvent(type="message_start", message=start))]

    def fail(self, failure: chat.Failed) -> list[str]:
        return [error_event(failure.message, anthropic_type(failure.type, failure.code))]

    def finish(self) -> list[str]:
        reason = _stop_reason(self.finish_reason, bool(self.tools))
        delta = RawMessageDeltaEvent(
            type="message_delta",
            delta=Delta(stop_reason=reason, stop_sequence=None),
            usage=MessageDeltaUsage(input_tokens=self.usage[0], output_tokens=self.usage[1]),
        )
        return [*self._stop(), _sse(delta), _sse(RawMessageStopEvent(type="message_stop"))]

    def _stop(self) -> list[str]:
        if self.open is None:
            return []
        index, self.open, self.kind = self.open, None, None
        return [_sse(RawContentBlockStopEvent(type="content_block_stop", index=index))]

    def _begin(self, block: TextBlock | ToolUseBlock, kind: Literal["text", "tool"]) -> list[str]:
        out = self._stop()
        self.open, self.kind = self.blocks, kind
        self.blocks += 1
        start = RawContentBlockStartEvent(
            type="content_block_start", index=self.open, content_block=block
        )
        return [*out, _sse(start)]

    def on(self, piece: Piece) -> list[str]:
        if isinstance(piece, chat.Comment):
            return [piece.line + "\n\n"]
        if isinstance(piece, chat.TextDelta):
            out = (
                [] if self.kind == "text" else self._begin(TextBlock(type="text", text=""), "text")
            )
            delta = RawContentBlockDeltaEvent(
                type="content_block_delta",
                index=self.blocks - 1,
                delta=TextDelta(type="text_delta", text=piece.text),
            )
            return [*out, _sse(delta)]
        if isinstance(piece, chat.ToolStart):
            block = ToolUseBlock(type="tool_use", id=piece.id, name=piece.name, input={})
            out = self._begin(block, "tool")
            self.tools[piece.index] = self.blocks - 1
            return out
        if isinstance(piece, chat.ToolArgs):
            index = self.tools.get(piece.index)
            if index is None or index != self.open:
                raise ValueError("The engine interleaved the arguments of several tool calls.")
            delta = RawContentBlockDeltaEvent(
                type="content_block_delta",
                index=index,
                delta=InputJSONDelta(type="input_json_delta", partial_json=piece.arguments),
            )
            return [_sse(delta)]
        if isinstance(piece, chat.Finished):
            self.finish_reason = piece.reason
        elif isinstance(piece, chat.UsageSeen):
            self.usage = (piece.prompt_tokens, piece.completion_tokens)
        return []
