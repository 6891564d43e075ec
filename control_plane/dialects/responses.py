"""A chat answer as an OpenAI Responses API ``Response``, whole or as its stream of events.

The wire shapes are the ``openai`` package's own types (``openai.types.responses``):
each object and event is built through them, so a field they require cannot be
left out. A streamed response sends ``response.created`` first, one output item
per text answer or tool call (``output_item.added``, deltas, ``.done``), and ends
with ``response.completed`` (or ``response.incomplete`` when the token cap cut
it) carrying usage; an engine failure mid-stream is an ``error`` event.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import BaseModel

from outpost.control_plane.dialects.chat import (
    ChatAnswer,
    Comment,
    Failed,
    Finished,
    Piece,
    TextDelta,
    ToolArgs,
    ToolCall,
    ToolStart,
    UsageSeen,
    new_id,
)
from outpost.control_plane.dialects.responses_request import ResponsesRequest

__all__ = ["ResponsesStream", "response_object"]

Status = Literal["completed", "incomplete", "in_progress"]


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _message(item_id: str, text: str, status: Status) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        status=status,
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])]
        if status != "in_progress"
        else [],
    )


def _call(item_id: str, call: ToolCall, status: Status) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        id=item_id,
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
        status=status,
    )


def _envelope(
    request: ResponsesRequest,
    response_id: str,
    created: float,
    status: Status,
    output: list[BaseModel],
    usage: dict[str, Any] | None,
) -> Response:
    tool_choice: Any = request.tool_choice or "auto"
    if not isinstance(tool_choice, str):
        tool_choice = {"type": "function", "name": tool_choice.name}
    return Response.model_validate(
        {
            "id": response_id,
            "object": "response",
            "created_at": created,
            "model": request.model,
            "status": status,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "output": [o.model_dump() for o in output],
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "tool_choice": tool_choice,
            "tools": [t.model_dump(exclude_none=True) for t in request.tools or []],
            "metadata": request.metadata or {},
            "store": False,
            "usage": usage,
        }
    )


def _finish_status(reason: str | None) -> Status:
    return "incomplete" if reason == "length" else "completed"


def response_object(request: ResponsesRequest, answer: ChatAnswer) -> Response:
    """A whole answer as a ``Response``: a message item for its text, one item per tool call."""
    status = _finish_status(answer.finish_reason)
    output: list[BaseModel] = []
    if answer.text or not answer.tool_calls:
        output.append(_message(new_id("msg"), answer.text, status))
    output += [_call(new_id("fc"), c, "completed") for c in answer.tool_calls]
    return _envelope(
        request,
        new_id("resp"),
        time.time(),
        status,
        output,
        _usage(answer.prompt_tokens, answer.completion_tokens),
    )


def _sse(event: BaseModel) -> str:
    data = event.model_dump_json(exclude_unset=True)
    return f"event: {getattr(event, 'type')}\ndata: {data}\n\n"


class ResponsesStream:
    """Translates the pieces of one streamed chat answer into Responses events, in order."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.id, self.created = new_id("resp"), time.time()
        self.seq = 0
        self.text: str | None = None  # the message item's text, once it has begun
        self.text_index = -1
        self.text_id = new_id("msg")
        self.calls: dict[int, tuple[int, str, ToolCall]] = {}  # chat index -> output index, id
        self.outputs = 0
        self.finish_reason: str | None = None
        self.usage = (0, 0)

    def _next(self) -> int:
        self.seq += 1
        return self.seq - 1

    def _response(self, status: Status, output: list[BaseModel]) -> Response:
        usage = _usage(*self.usage) if status != "in_progress" else None
        return _envelope(self.request, self.id, self.created, status, output, usage)

    def start(self) -> list[str]:
        begun = self._response("in_progress", [])
        created = ResponseCreatedEvent(
            type="response.created", response=begun, sequence_number=self._next()
        )
        progress = ResponseInProgressEvent(
            type="response.in_progress", response=begun, sequence_number=self._next()
        )
        return [_sse(created), _sse(progress)]

    def fail(self, failure: Failed) -> list[str]:
        """An ``error`` event. Beside the event's own fields it carries the ``error`` object of
        OpenAI's envelope: that is what makes the ``openai`` SDK raise, as on a chat stream."""
        error = ResponseErrorEvent(
            type="error",
            message=failure.message,
            code=failure.code,
            param=None,
            sequence_number=self._next(),
        )
        envelope = {"message": failure.message, "type": failure.type, "code": failure.code}
        data = {**error.model_dump(mode="json"), "error": {**envelope, "param": None}}
        return [f"event: error\ndata: {json.dumps(data)}\n\n"]

    def on(self, piece: Piece) -> list[str]:
        if isinstance(piece, Comment):
            return [piece.line + "\n\n"]
        if isinstance(piece, TextDelta):
            return self._text_delta(piece.text)
        if isinstance(piece, ToolStart):
            return self._tool_start(piece)
        if isinstance(piece, ToolArgs) and piece.index in self.calls:
            index, item_id, call = self.calls[piece.index]
            call.arguments += piece.arguments
            delta = ResponseFunctionCallArgumentsDeltaEvent(
                type="response.function_call_arguments.delta",
                item_id=item_id,
                output_index=index,
                delta=piece.arguments,
                sequence_number=self._next(),
            )
            return [_sse(delta)]
        if isinstance(piece, Finished):
            self.finish_reason = piece.reason
        elif isinstance(piece, UsageSeen):
            self.usage = (piece.prompt_tokens, piece.completion_tokens)
        return []

    def _text_delta(self, text: str) -> list[str]:
        out = []
        if self.text is None:
            self.text, self.text_index = "", self.outputs
            self.outputs += 1
            out.append(
                _sse(
                    ResponseOutputItemAddedEvent(
                        type="response.output_item.added",
                        output_index=self.text_index,
                        item=_message(self.text_id, "", "in_progress"),
                        sequence_number=self._next(),
                    )
                )
            )
            out.append(
                _sse(
                    ResponseContentPartAddedEvent(
                        type="response.content_part.added",
                        item_id=self.text_id,
                        output_index=self.text_index,
                        content_index=0,
                        part=ResponseOutputText(type="output_text", text="", annotations=[]),
                        sequence_number=self._next(),
                    )
                )
            )
        self.text += text
        delta = ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id=self.text_id,
            output_index=self.text_index,
            content_index=0,
            delta=text,
            logprobs=[],
            sequence_number=self._next(),
        )
        return [*out, _sse(delta)]

    def _tool_start(self, piece: ToolStart) -> list[str]:
        item_id, call = new_id("fc"), ToolCall(piece.id, piece.name)
        self.calls[piece.index] = (self.outputs, item_id, call)
        self.outputs += 1
        added = ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            output_index=self.outputs - 1,
            item=_call(item_id, call, "in_progress"),
            sequence_number=self._next(),
        )
        return [_sse(added)]

    def finish(self) -> list[str]:
        """The ``.done`` events of every item, in output order, then the final response."""
        status = _finish_status(self.finish_reason)
        entries: list[tuple[int, int | None]] = [
            (index, chat) for chat, (index, _, _) in self.calls.items()
        ]
        if self.text is not None:
            entries.append((self.text_index, None))
        out: list[str] = []
        final: list[BaseModel] = []
        for index, chat in sorted(entries, key=lambda e: e[0]):
            item: ResponseOutputMessage | ResponseFunctionToolCall
            if chat is None:
                item = _message(self.text_id, self.text or "", status)
                out += self._text_done(self.text or "")
            else:
                _, item_id, call = self.calls[chat]
                item = _call(item_id, call, "completed")
                done = ResponseFunctionCallArgumentsDoneEvent(
                    type="response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    arguments=call.arguments,
                    sequence_number=self._next(),
                )
                out.append(_sse(done))
            item_done = ResponseOutputItemDoneEvent(
                type="response.output_item.done",
                output_index=index,
                item=item,
                sequence_number=self._next(),
            )
            out.append(_sse(item_done))
            final.append(item)
        if not final:  # the engine said nothing at all: an empty message, as a whole answer has
            final.append(_message(self.text_id, "", status))
        response = self._response(status, final)
        if status == "incomplete":
            end: BaseModel = ResponseIncompleteEvent(
                type="response.incomplete", response=response, sequence_number=self._next()
            )
        else:
            end = ResponseCompletedEvent(
                type="response.completed", response=response, sequence_number=self._next()
            )
        return [*out, _sse(end)]

    def _text_done(self, text: str) -> list[str]:
        part = ResponseOutputText(type="output_text", text=text, annotations=[])
        text_done = ResponseTextDoneEvent(
            type="response.output_text.done",
            item_id=self.text_id,
            output_index=self.text_index,
            content_index=0,
            text=text,
            logprobs=[],
            sequence_number=self._next(),
        )
        part_done = ResponseContentPartDoneEvent(
            type="response.content_part.done",
            item_id=self.text_id,
            output_index=self.text_index,
            content_index=0,
            part=part,
            sequence_number=self._next(),
        )
        return [_sse(text_done), _sse(part_done)]
