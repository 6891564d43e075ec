"""The runner <-> control-plane tunnel contract, version 1.

Both ends import this module and nothing else defines a frame. Every frame is
one WebSocket *text* message holding a JSON object with a ``type`` field;
:func:`parse_frame` is the single validation entry point (a discriminated
union), so a malformed or unknown frame is rejected in one place.

Handshake (``docs/protocol.md`` has the sequence diagram)::

    runner                                   control plane
      |  --- WebSocket upgrade (no secret) -->  |
      |  <-- challenge.v1 {nonce, versions} --  |
      |  --- hello.v1 {runner_id, sig, ...} --> |   sig = Ed25519(handshake_message())
      |  <-- welcome.v1 {version, caps} ------  |   or close with a CloseReason

Streams: the control plane opens a stream with ``request.v1`` carrying a byte
credit window; the runner answers ``response_start.v1`` then ``data.v1``
frames (never more bytes than the credit the control plane has granted) and
finally ``end.v1`` with token usage. With capability ``binary-data`` the
runner's data goes in binary messages instead (:func:`encode_data_batch`):
bytes, not JSON, and several streams' pieces in one WebSocket write.
Either side may ``reset.v1`` a stream.
``goaway.v1`` asks the peer to stop opening streams and drain.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from outpost.sdk.hardware import HardwareReport
from outpost.sdk.logfmt import REQUEST_ID_PATTERN
from outpost.sdk.pricing import CostModel

__all__ = [
    "BINARY_DATA",
    "CAPABILITIES",
    "CLOSE_REASONS",
    "DEFAULT_STREAM_WINDOW",
    "MAX_DATA_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_IN_FLIGHT",
    "MAX_TOKENS",
    "PROTOCOL_VERSIONS",
    "TRACEPARENT_PATTERN",
    "ChallengeFrame",
    "CloseCode",
    "CloseReason",
    "DEPLOY_ENGINES",
    "MAX_MODEL_BYTES",
    "REPLICA_STATES",
    "DataFrame",
    "DeployFrame",
    "EndFrame",
    "EngineSlots",
    "Frame",
    "FrameError",
    "GoawayFrame",
    "HelloFrame",
    "HfSource",
    "ModelSource",
    "PathSource",
    "ReplicaFrame",
    "ReplicaState",
    "ModelInfo",
    "RequestFrame",
    "ResetFrame",
    "ResponseStartFrame",
    "StatusFrame",
    "UndeployFrame",
    "UrlSource",
    "Usage",
    "WelcomeFrame",
    "WindowUpdateFrame",
    "close_reason",
    "encode_data_batch",
    "encode_frame",
    "handshake_message",
    "negotiate_version",
    "parse_data_batch",
    "parse_frame",
]

#: Versions this build speaks, newest first.
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
#: Optional features a peer may announce; the session uses the intersection.
CAPABILITIES: frozenset[str] = frozenset(
    {
        "flow-control",
        "status",
        "e2e",
        "goaway",
        "request-id",
        "model-status",
        "headroom",
        "engine-slots",
        # deploy.v1 / undeploy.v1 / replica.v1 (docs/deployments.md). A runner announces it
        # only when it has a deployment manager (runner/deployments/), so not every build does.
        "deployments",
        # deploy.v1 carries ``served_name``: a replica answers to a runner-side name of its own,
        # so two deployments of one public name can share a runner (A/B on one machine).
        "served-names",
        "binary-data",
        # request.v1 carries a W3C ``traceparent`` (docs/deploy.md "Traces"); an old runner refuses
        # unknown fields, so the control plane sends it only to a runner that announced this.
        "traceparent",
    }
)

#: A websocket message is sent whole and blocks every other send on the
#: connection while it goes out, so no frame may be larger than this.
MAX_FRAME_BYTES = 64 * 1024
#: Payload bytes in one data frame, leaving room for the JSON envelope and
#: JSON string escaping (worst case roughly doubles the size).
MAX_DATA_BYTES = 16 * 1024
#: Bytes a runner may send on a stream before the control plane grants more.
DEFAULT_STREAM_WINDOW = 256 * 1024

# --- bounds on every number a peer sends (docs/protocol.md "Bounds") ---------
# A runner is untrusted: a number it reports reaches routing scores, Prometheus
# and the database, so each one is an exact integer (strict: no "5", no true,
# no 5.0) or a finite float (no NaN/Infinity), non-negative, and below a bound
# far above any real engine's yet small enough that no sum or product of them
# overflows a float, a SQL INTEGER or a counter.

#: Tokens in one request's prompt or completion; also a model's context length.
#: 2**27 (134M) is ten times the largest context window shipped today and fits
#: a 32-bit SQL INTEGER with room to add a prompt and a completion.
MAX_TOKENS = 2**27
#: Requests running or waiting on one runner (a hello's capacity is <= 4096).
MAX_IN_FLIGHT = 1_000_000
#: A monotonic counter (``status.v1`` ``completed``): exact in a float (Prometheus).
_MAX_COUNTER = 2**53
#: A stream id: the control plane gives them out from 1 upwards per connection.
_MAX_STREAM_ID = 2**53
# A hello's cost and hardware are bounded by their own models (sdk/pricing.py, sdk/hardware.py).

_Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)]
_InFlight = Annotated[int, Field(strict=True, ge=0, le=MAX_IN_FLIGHT)]
_Counter = Annotated[int, Field(strict=True, ge=0, le=_MAX_COUNTER)]
_StreamId = Annotated[int, Field(strict=True, ge=1, le=_MAX_STREAM_ID)]
_Version = Annotated[int, Field(strict=True, ge=0, le=65535)]
_Flag = Annotated[bool, Field(strict=True)]
_Name = Annotated[str, Field(min_length=1, max_length=200)]
_Word = Annotated[str, Field(min_length=1, max_length=64)]


class FrameError(ValueError):
    """A frame that cannot be accepted; the connection closes with ``code``."""

    def __init__(self, message: str, code: CloseCode | None = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else CloseCode.PROTOCOL_ERROR


class _Frame(BaseModel):
    # Unknown fields are refused: a frame is a contract, not a bag. No float
    # field may be NaN or infinite (each also has an explicit range).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    engine: str = Field(min_length=1, max_length=64)
    context_length: int | None = Field(default=None, ge=1, le=MAX_TOKENS, strict=True)
    quantization: str | None = Field(default=None, max_length=64)
    aliases: list[_Name] = Field(default_factory=list, max_length=32)
    # OpenAI endpoints the engine answers for this model ("chat", "completions",
    # "embeddings"); a hello without it means the two generation endpoints.
    endpoints: list[_Word] = Field(default_factory=lambda: ["chat", "completions"], max_length=8)


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: _Tokens = 0
    completion_tokens: _Tokens = 0


# --- handshake -------------------------------------------------------------


class ChallengeFrame(_Frame):
    type: Literal["challenge.v1"] = "challenge.v1"
    nonce: str = Field(min_length=32, max_length=128)
    versions: list[_Version] = Field(min_length=1, max_length=16)


class HelloFrame(_Frame):
    type: Literal["hello.v1"] = "hello.v1"
    runner_id: str = Field(min_length=1, max_length=64)
    version: _Version
    signature: str = Field(min_length=1, max_length=256)
    capabilities: list[_Word] = Field(default_factory=list, max_length=32)
    models: list[ModelInfo] = Field(default_factory=list, max_length=64)
    capacity: int = Field(default=1, ge=1, le=4096, strict=True)
    # The machine's report (sdk/hardware.py); an old runner without one sends ``{}``.
    hardware: HardwareReport | None = None
    labels: dict[_Word, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=64
    )
    # The runner's proposed price (sdk/pricing.py); an old runner without one sends ``{}``.
    cost: CostModel = Field(default_factory=CostModel)
    connection_index: int = Field(default=0, ge=0, le=64, strict=True)

    @field_validator("hardware", mode="before")
    @classmethod
    def _empty_hardware_is_none(cls, value: object) -> object:
        return None if value == {} else value

    @model_serializer(mode="wrap")
    def _compact_reports(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Unset cost fields are left out and a missing report goes out as ``{}``,
        # the forms a control plane from before the typed models accepts.
        data: dict[str, Any] = handler(self)
        data["cost"] = self.cost.to_dict()
        data["hardware"] = self.hardware.to_dict() if self.hardware is not None else {}
        return data


class WelcomeFrame(_Frame):
    type: Literal["welcome.v1"] = "welcome.v1"
    version: _Version
    capabilities: list[_Word] = Field(max_length=32)
    session_id: str = Field(max_length=64)
    # The control plane tells the runner how often to expect status frames.
    status_interval_s: float = Field(default=2.0, gt=0, le=3600)


# --- streams ---------------------------------------------------------------

#: A W3C Trace Context ``traceparent`` (version 00, lower-case hex, as its spec requires); the
#: all-zero trace and span ids the spec calls invalid are refused too. 55 characters, never more.
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class RequestFrame(_Frame):
    type: Literal["request.v1"] = "request.v1"
    stream_id: _StreamId
    method: Literal["POST", "GET"] = "POST"
    path: str = Field(pattern=r"^/v1/[a-z/]+$", max_length=64)
    model: str = Field(min_length=1, max_length=200)
    # Bodies larger than one frame continue in data.v1 frames sent by the
    # control plane until ``len(body)`` reaches ``body_length``.
    body: str = Field(max_length=MAX_DATA_BYTES)
    body_length: int = Field(ge=0, le=16 * 1024 * 1024, strict=True)
    stream: _Flag = False
    window: int = Field(
        default=DEFAULT_STREAM_WINDOW, ge=MAX_DATA_BYTES, le=16 * 1024 * 1024, strict=True
    )
    # True when ``body`` is an e2e envelope the control plane cannot read.
    sealed: _Flag = False
    # The client request's id, for log correlation. Only sent when both ends
    # announced the ``request-id`` capability: a receiver refuses unknown
    # fields, so the field is left out of the wire form when absent.
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)
    # The control plane's dispatch span (capability ``traceparent``, docs/deploy.md "Traces"):
    # the runner's spans join the request's trace and its engine gets the header. Left out of
    # the wire form when absent, like ``request_id``.
    traceparent: str | None = Field(default=None, pattern=TRACEPARENT_PATTERN, max_length=55)

    @field_validator("traceparent")
    @classmethod
    def _valid_trace_ids(cls, value: str | None) -> str | None:
        # pydantic's regex engine has no look-ahead: the spec's invalid all-zero ids, here.
        if value is not None and ("-" + "0" * 32 + "-" in value or "-" + "0" * 16 + "-" in value):
            raise ValueError("traceparent with an all-zero trace or span id")
        return value

    @model_serializer(mode="wrap")
    def _omit_absent_request_id(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in ("request_id", "traceparent"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class ResponseStartFrame(_Frame):
    type: Literal["response_start.v1"] = "response_start.v1"
    stream_id: _StreamId
    # The wire allows any HTTP status; the control plane answers a client only
    # with 200-599 and JSON or SSE, anything else ends the stream as engine_error
    # (control_plane/tunnel/stream.py).
    status: int = Field(ge=100, le=599, strict=True)
    content_type: str = Field(default="application/json", max_length=128)


class DataFrame(_Frame):
    type: Literal["data.v1"] = "data.v1"
    stream_id: _StreamId
    data: str = Field(max_length=MAX_DATA_BYTES)


class EndFrame(_Frame):
    type: Literal["end.v1"] = "end.v1"
    stream_id: _StreamId
    usage: Usage | None = None
    # Set when the engine failed mid-stream; the control plane turns it into
    # an error event for the client.
    error: str | None = Field(default=None, max_length=1024)
    # e2e: a usage receipt signed by the runner's identity key.
    receipt: str | None = Field(default=None, max_length=4096)


class ResetFrame(_Frame):
    type: Literal["reset.v1"] = "reset.v1"
    stream_id: _StreamId
    reason: str = Field(default="cancelled", max_length=256)


class WindowUpdateFrame(_Frame):
    type: Literal["window_update.v1"] = "window_update.v1"
    stream_id: _StreamId
    increment: int = Field(ge=1, le=16 * 1024 * 1024, strict=True)


# --- connection --------------------------------------------------------------


class EngineSlots(BaseModel):
    """One engine of a runner that runs several: the models it serves and its own slots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[_Name] = Field(min_length=1, max_length=64)  # hello model names
    capacity: int = Field(ge=1, le=4096, strict=True)
    headroom: int = Field(default=0, ge=0, le=64, strict=True)


class StatusFrame(_Frame):
    type: Literal["status.v1"] = "status.v1"
    running: _InFlight = 0
    waiting: _InFlight = 0
    kv_cache_usage: float | None = Field(default=None, ge=0.0, le=1.0)
    healthy: _Flag = True
    # Streams this runner has answered to the end since it started.
    completed: _Counter = 0
    # Models of the hello (by name) whose engine is down right now; the runner
    # stays routable for the others, and ``healthy`` is false only when none is
    # up. Sent only when both ends announced ``model-status``: a receiver refuses
    # unknown fields, so an empty list is left out of the wire form.
    unavailable_models: list[_Name] = Field(default_factory=list, max_length=64)
    # Engine slots beyond the hello's ``capacity`` that the control plane may
    # grant only to a tenant with nothing in flight (fair headroom,
    # docs/fairness.md). Sent only when both ends announced ``headroom``; 0 is
    # left out of the wire form, like an empty ``unavailable_models``.
    headroom: int = Field(default=0, ge=0, le=64, strict=True)
    # A runner with several engines: each engine's models and slots, so the
    # control plane admits per engine rather than up to the runner-wide sum
    # (docs/protocol.md "Engine slots"). Sent only when both ends announced
    # ``engine-slots``; an empty list is left out of the wire form.
    engines: list[EngineSlots] = Field(default_factory=list, max_length=64)

    @model_serializer(mode="wrap")
    def _omit_empty_optional(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in ("unavailable_models", "headroom", "engines"):
            if not data.get(name):
                data.pop(name, None)
        return data


class GoawayFrame(_Frame):
    type: Literal["goaway.v1"] = "goaway.v1"
    reason: str = Field(default="shutdown", max_length=256)
    # Streams already open may run this long before the sender closes.
    drain_s: float = Field(default=30.0, ge=0, le=3600)


# --- deployments (capability ``deployments``, docs/deployments.md) ----------------
# The control plane tells a runner to fetch and serve a model; the runner reports
# each replica's progress. Only names, checksums and numbers cross the tunnel:
# model bytes never do (the runner fetches them from its own premises).

#: A model file's size or a download's progress: 2**50 (1 PiB) is far above any
#: model and exact in a float.
MAX_MODEL_BYTES = 2**50
#: What ``engine`` in a deploy frame may name: ``auto`` lets the runner's planner pick.
DEPLOY_ENGINES: tuple[str, ...] = ("auto", "llama.cpp", "vllm")
ReplicaState = Literal[
    "pending", "downloading", "loading", "ready", "failed", "draining", "stopped"
]
REPLICA_STATES: tuple[str, ...] = (
    "pending",
    "downloading",
    "loading",
    "ready",
    "failed",
    "draining",
    "stopped",
)

_Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
_Bytes = Annotated[int, Field(strict=True, ge=0, le=MAX_MODEL_BYTES)]
_OptionKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
# An option value is a scalar: an engine's flags, never a structure to interpret.
_OptionValue = (
    Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True, ge=-(2**31), le=2**31)]
    | Annotated[float, Field(strict=True, ge=-1e9, le=1e9, allow_inf_nan=False)]
    | Annotated[str, Field(max_length=256)]
)


def _relative_path(value: str) -> str:
    """A path below some root, in POSIX form: no root, no ``..``, no drive, no control bytes."""
    if not value or value.startswith(("/", "\\")) or "\\" in value:
        raise ValueError("must be a relative POSIX path")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or ":" in value.split("/")[0]:
        raise ValueError("must not hold control characters or a drive")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("must not hold empty, '.' or '..' parts")
    return value


class PathSource(BaseModel):
    """A file (or a directory of one model) under the runner's model directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["path"] = "path"
    path: str = Field(min_length=1, max_length=1024)

    @field_validator("path")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        return _relative_path(value)


class UrlSource(BaseModel):
    """An HTTP(S) URL the runner downloads; the checksum is required and verified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["url"] = "url"
    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://[^\s@/]+(/[^\s]*)?$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class HfSource(BaseModel):
    """A Hugging Face repo, through the runner's ``huggingface_hub`` (HF_ENDPOINT, cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hf"] = "hf"
    repo: str = Field(
        max_length=96, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
    )
    revision: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._/-]+$")
    # One file of the repo (a .gguf); None: the runner picks the repo's one GGUF.
    filename: str | None = Field(default=None, max_length=512)

    @field_validator("revision", "filename")
    @classmethod
    def _no_traversal(cls, value: str | None) -> str | None:
        return None if value is None else _relative_path(value)


ModelSource = Annotated[PathSource | UrlSource | HfSource, Field(discriminator="kind")]


class DeployFrame(_Frame):
    """Control plane -> runner: fetch this model and serve it as one replica."""

    type: Literal["deploy.v1"] = "deploy.v1"
    replica_id: _Id
    deployment_id: _Id
    # Bumped by every update of the deployment (rolling updates replace replica by replica).
    generation: int = Field(default=1, ge=0, le=2**31, strict=True)
    name: _Name  # the public model name this replica serves
    aliases: list[_Name] = Field(default_factory=list, max_length=32)
    # With ``served-names``: the one name requests for this replica carry on the runner (its
    # deployment's id), unique there; answers still say ``name``. None: it answers to
    # ``name`` and ``aliases`` (a runner without the capability never gets this field).
    served_name: _Name | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_served_name(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out of the wire form when absent: an older runner refuses unknown fields.
        data: dict[str, Any] = handler(self)
        if data.get("served_name") is None:
            data.pop("served_name", None)
        return data

    source: ModelSource
    engine: Literal["auto", "llama.cpp", "vllm"] = "auto"
    # Checked against the runner's allow-list (docs/deployments.md "Engine options").
    engine_options: dict[_OptionKey, _OptionValue] = Field(default_factory=dict, max_length=16)


class UndeployFrame(_Frame):
    """Control plane -> runner: stop one replica after its streams drain."""

    type: Literal["undeploy.v1"] = "undeploy.v1"
    replica_id: _Id
    drain_s: float = Field(default=30.0, ge=0, le=3600, strict=True)


class ReplicaFrame(_Frame):
    """Runner -> control plane: where one replica stands."""

    type: Literal["replica.v1"] = "replica.v1"
    replica_id: _Id
    state: ReplicaState
    bytes_done: _Bytes = 0
    bytes_total: _Bytes | None = None
    rate_bps: float = Field(default=0.0, ge=0, le=1e12, strict=True)
    # Why it failed or what it is doing; untrusted text, escape before logging.
    reason: str | None = Field(default=None, max_length=512)
    # Set once ``ready``: what the replica serves. Its name must be the deploy's.
    model: ModelInfo | None = None

    @model_validator(mode="after")
    def _model_only_when_ready(self) -> ReplicaFrame:
        if (self.state == "ready") != (self.model is not None):
            raise ValueError("model is set exactly when state is ready")
        if self.bytes_total is not None and self.bytes_done > self.bytes_total:
            raise ValueError("bytes_done exceeds bytes_total")
        return self


Frame: TypeAlias = Annotated[
    ChallengeFrame
    | HelloFrame
    | WelcomeFrame
    | RequestFrame
    | ResponseStartFrame
    | DataFrame
    | EndFrame
    | ResetFrame
    | WindowUpdateFrame
    | StatusFrame
    | GoawayFrame
    | DeployFrame
    | UndeployFrame
    | ReplicaFrame,
    Field(discriminator="type"),
]
_FRAME_ADAPTER: TypeAdapter[Frame] = TypeAdapter(Frame)


def parse_frame(raw: str | bytes) -> Frame:
    """Validate one wire message; raise :class:`FrameError` on anything else."""
    if isinstance(raw, bytes):
        raise FrameError("binary messages are not part of protocol v1")
    if len(raw) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(raw)} bytes exceeds {MAX_FRAME_BYTES}", CloseCode.TOO_BIG)
    try:
        return _FRAME_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise FrameError(f"invalid frame: {where}: {first.get('msg')}") from None


# --- binary data batches (capability ``binary-data``) -------------------------
# Response data as bytes, several streams' pieces in one WebSocket *binary* message:
#
#     message = kind:u8 (BINARY_DATA) record+
#     record  = stream_id:u64 length:u32 payload[length]      (big-endian)
#
# Only the runner sends them, and only when both ends announced ``binary-data``
# (an older peer keeps getting ``data.v1``). A record is a ``data.v1`` frame
# without the JSON: the payload is the UTF-8 text that frame would carry, at
# most MAX_DATA_BYTES bytes, and counts against the stream's window in
# characters, as ``data.v1`` does.

#: The first byte of a binary data batch; another value is refused (room for later kinds).
BINARY_DATA = 0x01
_RECORD = struct.Struct(">QI")


def encode_data_batch(records: list[tuple[int, bytes]]) -> bytes:
    """One binary message holding ``(stream_id, payload)`` records, in order."""
    parts = [bytes((BINARY_DATA,))]
    for sid, payload in records:
        parts.append(_RECORD.pack(sid, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def parse_data_batch(raw: bytes) -> list[tuple[int, str]]:
    """Validate one binary message: its ``(stream_id, text)`` records, or :class:`FrameError`.

    The same bounds as ``data.v1``: a stream id in range, at most MAX_DATA_BYTES
    of payload per record, valid UTF-8, and the message within MAX_FRAME_BYTES.
    """
    size = len(raw)
    if size > MAX_FRAME_BYTES:
        raise FrameError(
            f"binary message of {size} bytes exceeds {MAX_FRAME_BYTES}", CloseCode.TOO_BIG
        )
    if size == 0 or raw[0] != BINARY_DATA:
        raise FrameError("binary message of an unknown kind")
    records: list[tuple[int, str]] = []
    at, header = 1, _RECORD.size
    while at < size:
        if at + header > size:
            raise FrameError("binary message: truncated record header")
        sid, length = _RECORD.unpack_from(raw, at)
        at += header
        if not 1 <= sid <= _MAX_STREAM_ID:
            raise FrameError(f"binary message: stream id {sid} out of range")
        if length > MAX_DATA_BYTES or at + length > size:
            raise FrameError(f"binary message: record of {length} bytes is too long")
        try:
            text = raw[at : at + length].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("binary message: payload is not UTF-8") from None
        records.append((sid, text))
        at += length
    if not records:
        raise FrameError("binary message without a record")
    return records


def encode_frame(frame: _Frame) -> str:
    return frame.model_dump_json(exclude_defaults=False)


def negotiate_version(offered: list[int] | tuple[int, ...]) -> int | None:
    """Highest version both sides speak, or ``None``."""
    common = set(offered) & set(PROTOCOL_VERSIONS)
    return max(common) if common else None


def handshake_message(nonce: str, runner_id: str, version: int) -> bytes:
    """The exact bytes a runner signs to prove its identity.

    Binding the runner id and version into the signed message stops a
    signature for one runner or version being replayed as another.
    """
    return json.dumps(
        {"ctx": "outpost-tunnel-hello", "nonce": nonce, "runner_id": runner_id, "version": version},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


# --- close reasons -------------------------------------------------------------


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 4000
    AUTH_FAILED = 4001
    REVOKED = 4003
    UNSUPPORTED_VERSION = 4004
    TOO_BIG = 4009
    HANDSHAKE_TIMEOUT = 4008
    DUPLICATE = 4010
    SERVER_ERROR = 4011


@dataclass(frozen=True)
class CloseReason:
    code: CloseCode
    retryable: bool  # reconnecting may succeed
    terminal: bool  # the runner should stop entirely (operator action needed)
    description: str


CLOSE_REASONS: dict[int, CloseReason] = {
    r.code: r
    for r in (
        CloseReason(CloseCode.NORMAL, True, False, "closed normally"),
        CloseReason(CloseCode.GOING_AWAY, True, False, "peer is shutting down"),
        CloseReason(CloseCode.PROTOCOL_ERROR, True, False, "a frame broke the protocol"),
        CloseReason(CloseCode.AUTH_FAILED, False, True, "identity signature rejected"),
        CloseReason(CloseCode.REVOKED, False, True, "runner revoked by an operator"),
        CloseReason(CloseCode.UNSUPPORTED_VERSION, False, True, "no common protocol version"),
        CloseReason(CloseCode.HANDSHAKE_TIMEOUT, True, False, "handshake took too long"),
        CloseReason(CloseCode.TOO_BIG, True, False, "frame over the size cap"),
        CloseReason(CloseCode.DUPLICATE, True, False, "connection slot already taken"),
        CloseReason(CloseCode.SERVER_ERROR, True, False, "control plane error"),
    )
}


def close_reason(code: int | None) -> CloseReason:
    """Look up a close code; unknown codes (network drops) are retryable."""
    if code is not None and code in CLOSE_REASONS:
        return CLOSE_REASONS[code]
    return CloseReason(CloseCode.GOING_AWAY, True, False, f"connection lost (code {code})")
