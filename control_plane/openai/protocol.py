"""Wire models of the OpenAI surface.

Unknown fields are accepted and passed through to the engine (a gateway must
carry vendor extras such as llama.cpp's ``top_k``); known fields are bounded
and strict: ``max_tokens: "5"``, ``max_tokens: true`` or ``stream: "yes"`` are
400s, not coerced (an engine may read the raw value differently from us). Any
string of the body, vendor fields and keys included, must be encodable as
UTF-8: a lone surrogate (``"\ud800"``) is a 400, not a 500 when the body is
re-encoded for the runner. Vendor fields that change how many tokens or
sequences are generated are checked in ``caps.py``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from outpost.control_plane.openai.tools import MAX_TOOLS, ResponseFormat, Tool, ToolChoice

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Message",
    "RerankRequest",
    "StreamOptions",
]

#: Rough characters per token, for routing estimates only (never for billing).
CHARS_PER_TOKEN = 4

_Int = Annotated[int, Field(strict=True)]
_Bool = Annotated[bool, Field(strict=True)]
_Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: A token id (a vocabulary index; 2**31 is far above any vocabulary).
_TokenId = Annotated[int, Field(strict=True, ge=0, lt=2**31)]


def _unencodable(value: object, depth: int = 0) -> str | None:
    """The first string of a decoded JSON body that UTF-8 cannot encode (a lone surrogate), or the
    first NaN/Infinity (Python's JSON parser accepts them; no engine does), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("ascii", "replace")[:40]
        return None
    if depth > 64:  # JSON nesting this deep is refused by the body parser long before
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if (bad := _unencodable(k, depth + 1) or _unencodable(v, depth + 1)) is not None:
                return bad
    elif isinstance(value, list):
        for v in value:
            if (bad := _unencodable(v, depth + 1)) is not None:
                return bad
    return None


class _Encodable(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _utf8_only(cls, data: Any) -> Any:
        if (bad := _unencodable(data)) is not None:
            raise ValueError(
                f"strings must be valid Unicode (UTF-8 encodable) and numbers finite; got {bad!r}"
            )
        return data


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=32)
    content: str | list[dict[str, Any]] | None = None
    # An assistant turn's calls, and a "tool" turn's answer to one of them (sent on as given).
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _tool_turn(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError('a message with role "tool" needs the tool_call_id it answers')
        for call in self.tool_calls or ():
            _check_arguments(call)
        return self


def _check_arguments(call: dict[str, Any]) -> None:
    """An earlier turn's call, sent back: engines read its arguments as JSON (llama.cpp answers
    a 500 otherwise), so text that is not a JSON object, as a call cut off by ``max_tokens``
    leaves it, is the client's to fix: a 400 that says so rather than the engine's 5xx."""
    function = call.get("function")
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if arguments is None:
        return
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(
            "tool_calls[].function.arguments must be a JSON object as text (a call cut off by "
            "max_tokens is not one)"
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: _Bool = False


class _Base(_Encodable):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    stream: _Bool = False
    stream_options: StreamOptions | None = None
    max_tokens: _Int | None = Field(default=None, ge=1)
    temperature: _Float | None = Field(default=None, ge=0, le=2)
    top_p: _Float | None = Field(default=None, ge=0, le=1)
    # Several choices are served as several admitted requests (fanout.py); bounded there.
    n: _Int | None = Field(default=None, ge=1)
    seed: _Int | None = Field(default=None, ge=-(2**63), lt=2**64)
    user: str | None = Field(default=None, max_length=256)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def vendor_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    def estimated_prompt_tokens(self) -> int:
        return 0


class ChatCompletionRequest(_Base):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: _Int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: _Bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if choice is None or choice == "none" or choice == "auto" and not self.tools:
            return self
        if not self.tools:
            raise ValueError(f"tool_choice {_choice_text(choice)} needs tools")
        if not isinstance(choice, str):
            names = {t.function.name for t in self.tools}
            if choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names {choice.function.name!r}, which is not among the tools"
                )
        return self

    def uses_tools(self) -> bool:
        """The engine must be able to call tools: some are declared and may be called."""
        return bool(self.tools) and self.tool_choice != "none"

    def requested_max_tokens(self) -> int | None:
        caps = [c for c in (self.max_completion_tokens, self.max_tokens) if c is not None]
        return min(caps) if caps else None

    def estimated_prompt_tokens(self) -> int:
        chars = sum(
            len(m.content) if isinstance(m.content, str) else len(str(m.content or ""))
            for m in self.messages
        )
        return chars // CHARS_PER_TOKEN + 4 * len(self.messages)  # + chat-template tokens


def _choice_text(choice: object) -> str:
    return repr(choice) if isinstance(choice, str) else "naming a function"


class CompletionRequest(_Base):
    # Text, texts, token ids or lists of token ids, as OpenAI accepts; bounded by
    # the request body limit. More than one prompt is refused (caps.py).
    prompt: str | list[str] | list[_TokenId] | list[list[_TokenId]]
    best_of: _Int | None = Field(default=None, ge=1)

    def prompts(self) -> int:
        """How many sequences the prompt asks for: one per string or per list of token ids."""
        if isinstance(self.prompt, str) or not self.prompt or isinstance(self.prompt[0], int):
            return 1
        return len(self.prompt)

    def estimated_prompt_tokens(self) -> int:
        if isinstance(self.prompt, str):
            return len(self.prompt) // CHARS_PER_TOKEN
        return sum(
            len(p) // CHARS_PER_TOKEN
            if isinstance(p, str)
            else (len(p) if isinstance(p, list) else 1)
            for p in self.prompt
        )


class RerankRequest(_Encodable):
    """``POST /v1/rerank`` (the Jina/Cohere shape llama.cpp and vLLM answer): score each of
    ``documents`` against ``query``; ``top_n`` keeps the best ones."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, max_length=1024)
    top_n: _Int | None = Field(default=None, ge=1)
    return_documents: _Bool | None = None

    def vendor_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    def estimated_prompt_tokens(self) -> int:
        # Each document is scored with the query beside it.
        q = len(self.query) // CHARS_PER_TOKEN
        return sum(q + len(d) // CHARS_PER_TOKEN for d in self.documents)


class EmbeddingRequest(_Encodable):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    # Text, texts, token ids or lists of token ids, as OpenAI accepts.
    input: str | list[str] | list[_TokenId] | list[list[_TokenId]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: _Int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        if not value:
            raise ValueError("input must not be empty")
        return value

    def vendor_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    def estimated_prompt_tokens(self) -> int:
        items = [self.input] if isinstance(self.input, str) else self.input
        return sum(
            len(i) // CHARS_PER_TOKEN
            if isinstance(i, str)
            else (len(i) if isinstance(i, list) else 1)
            for i in items
        )
