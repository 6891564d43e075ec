"""Wire models of the OpenAI surface.

Unknown fields are accepted and passed through to the engine (a gateway must
carry vendor extras such as llama.cpp's ``top_k``); known fields are bounded.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatCompletionRequest", "CompletionRequest", "Message", "StreamOptions"]


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


class ChatCompletionRequest(_Base):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Base):
    # Bounded by the request body limit, not here.
    prompt: str | list[str]
