"""Wire models of tool calls and structured output on chat completions (issue 23).

Bounded and strict where the engine would misread or choke: at most
:data:`MAX_TOOLS` tools, each function's JSON schema at most
:data:`MAX_SCHEMA_BYTES` when serialised, names as OpenAI allows them, and a
named ``tool_choice`` must name one of the tools. Everything else in a tool
(``strict``, vendor keys) passes through to the engine.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_TOOLS",
    "FunctionChoice",
    "ResponseFormat",
    "Tool",
    "ToolChoice",
    "schema_size",
]

#: Tools one request may declare (OpenAI's own limit is 128).
MAX_TOOLS = 128
#: A function's parameters (or a response format's schema), serialised: larger ones are refused
#: rather than compiled into a grammar by the engine.
MAX_SCHEMA_BYTES = 64 * 1024

#: OpenAI's rule for function names.
_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def schema_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _bounded_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and (size := schema_size(value)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"schema is {size} bytes serialised; at most {MAX_SCHEMA_BYTES}")
    return value


class Function(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: _Name
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: Annotated[bool, Field(strict=True)] | None = None

    _schema = field_validator("parameters")(_bounded_schema)


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: Function


class _Named(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: _Name


class FunctionChoice(BaseModel):
    """``{"type": "function", "function": {"name": ...}}``: call that function."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: _Named


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice


class ResponseFormat(BaseModel):
    """``text``, ``json_object``, or ``json_schema`` with ``{"name", "schema", "strict"}``."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    # A dict, not a model: its "schema" key would need a pydantic alias, and the body is
    # forwarded as the client wrote it.
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        spec = self.json_schema
        if self.type != "json_schema":
            return self
        if spec is None or not isinstance(spec.get("schema", {}), dict):
            raise ValueError('type "json_schema" needs json_schema: {"name": ..., "schema": {...}}')
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError("json_schema.name must be 1-64 letters, digits, _ or -")
        _bounded_schema(spec.get("schema"))
        return self
