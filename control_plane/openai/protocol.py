"""Wire models of the OpenAI surface.

Unknown fields are accepted and passed through to the engine (a gateway must
carry vendor extras such as llama.cpp's ``top_k``); known fields are bounded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest", "Message", "StreamOptions"]

#: Rough characters per token, for routing estimates only (never for billing).
CHARS_PER_TOKEN = 4


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=32)
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def vendor_fields(self) -> list[str]:
        return sorted((self.model_extra or {}).keys())

    def estimated_prompt_tokens(self) -> int:
        return 0


class ChatCompletionRequest(_Base):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def estimated_prompt_tokens(self) -> int:
        chars = sum(len(m.content) if isinstance(m.content, str) else len(str(m.content or ""))
                    for m in self.messages)
        return chars // CHARS_PER_TOKEN + 4 * len(self.messages)  # + chat-template tokens


class CompletionRequest(_Base):
    # Bounded by the request body limit, not here.
    prompt: str | list[str]

    def estimated_prompt_tokens(self) -> int:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        return sum(len(p) for p in prompts) // CHARS_PER_TOKEN


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    # Text, texts, token ids or lists of token ids, as OpenAI accepts.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
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
        return sum(len(i) // CHARS_PER_TOKEN if isinstance(i, str) else (len(i) if isinstance(i, list) else 1)
                   for i in items)
