"""Reading a chat-completions answer, whole or streamed, for the dialects to re-dress.

The answer comes from a runner, which is untrusted: every shape is checked, a
malformed piece becomes a :class:`Failed` (the client gets an error in its own
dialect, never a 500), and token counts are bounded. Comment lines of the SSE
stream (``: keep-alive`` while a request waits) are handed on as they are: both
dialects' clients skip them, and a proxy in front needs them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChatAnswer",
    "ChatReader",
    "Comment",
    "Failed",
    "Finished",
    "Piece",
    "TextDelta",
    "ToolArgs",
    "ToolCall",
    "ToolStart",
    "UsageSeen",
    "new_id",
    "parse_completion",
]

#: Token counts a runner reports are bounded like every number crossing a boundary.
_MAX_TOKENS = 2**31 - 1
#: Tool calls of one answer; an index beyond it is a malformed answer.
MAX_TOOL_CALLS = 128


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""


@dataclass
class ChatAnswer:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Comment:
    line: str  # an SSE comment, handed on


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolArgs:
    index: int
    arguments: str


@dataclass(frozen=True)
class Finished:
    reason: str


@dataclass(frozen=True)
class UsageSeen:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str
    type: str = "server_error"
    code: str | None = "engine_error"


Piece = Comment | TextDelta | ToolStart | ToolArgs | Finished | UsageSeen | Failed


def _tokens(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, min(value, _MAX_TOKENS))


def _usage(data: dict[str, Any]) -> tuple[int, int] | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return _tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens"))


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def parse_completion(body: str) -> ChatAnswer:
    """A whole chat completion; ``ValueError`` when it is not one."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("not a chat completion")
    answer = ChatAnswer()
    if data["choices"]:
        choice = data["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise ValueError("a choice without a message")
        answer.text = _str(message.get("content"))
        answer.finish_reason = _str(choice.get("finish_reason")) or None
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
            raise ValueError("malformed tool_calls")
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                raise ValueError("a tool call without a function")
            answer.tool_calls.append(
                ToolCall(
                    id=_str(call.get("id")) or new_id("call"),
                    name=_str(fn.get("name")),
                    arguments=_str(fn.get("arguments")),
                )
            )
    if (usage := _usage(data)) is not None:
        answer.prompt_tokens, answer.completion_tokens = usage
    return answer


class _SseReader:
    """Splits relayed text into SSE events; a frame may end mid-event."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, chunk: str) -> list[str]:
        self._buffer += chunk.replace("\r\n", "\n")
        *events, self._buffer = self._buffer.split("\n\n")
        return events


def _chunk_pieces(data: dict[str, Any], started: set[int]) -> list[Piece]:
    if isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code")
        return [
            Failed(
                _str(err.get("message"))[:500] or "engine error",
                _str(err.get("type")) or "server_error",
                code if isinstance(code, str) else None,
            )
        ]
    pieces: list[Piece] = []
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
        if text := _str(delta.get("content")):
            pieces.append(TextDelta(text))
        calls = delta.get("tool_calls") or []
        for call in calls if isinstance(calls, list) else [None]:
            pieces.extend(_tool_pieces(call, started))
        if reason := _str(choice.get("finish_reason")):
            pieces.append(Finished(reason))
    if (usage := _usage(data)) is not None:
        pieces.append(UsageSeen(*usage))
    return pieces


def _tool_pieces(call: object, started: set[int]) -> list[Piece]:
    if not isinstance(call, dict):
        return [Failed("The engine sent a malformed tool call.")]
    index = call.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_TOOL_CALLS:
        return [Failed("The engine sent a tool call with an out-of-range index.")]
    fn = call["function"] if isinstance(call.get("function"), dict) else {}
    pieces: list[Piece] = []
    if index not in started:
        started.add(index)
        pieces.append(
            ToolStart(index, _str(call.get("id")) or new_id("call"), _str(fn.get("name")))
        )
    if args := _str(fn.get("arguments")):
        pieces.append(ToolArgs(index, args))
    return pieces


class ChatReader:
    """The pieces of a streamed chat answer, from the relay's SSE text as it comes. After a
    :class:`Failed`, nothing more is read: the answer is over for the client."""

    def __init__(self) -> None:
        self._sse, self._started, self.failed = _SseReader(), set[int](), False

    def feed(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        for event in self._sse.feed(text):
            data_lines = []
            for line in event.split("\n"):
                if line.startswith(":"):
                    pieces.append(Comment(line))
                elif line.startswith("data:"):
                    data_lines.append(line[5:].strip())
            payload = "\n".join(data_lines)
            if not payload or payload == "[DONE]" or self.failed:
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                data = None
            for piece in (
                _chunk_pieces(data, self._started)
                if isinstance(data, dict)
                else [Failed("The engine sent a malformed stream chunk.")]
            ):
                pieces.append(piece)
                if isinstance(piece, Failed):
                    self.failed = True
                    break
        return pieces
