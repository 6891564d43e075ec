"""Relay a sealed (end-to-end) request: open it, run it on the engine, seal the answer.

The wire format is :mod:`sdk.sealed`. Opening and sealing are plain
functions (:func:`open_sealed`, :class:`SealedWriter`) so they are tested
without a tunnel; :class:`SealedRelay` drives them over one tunnel stream.
The control plane sees the clear :class:`~sdk.sealed.SealedRequest` fields,
chunk sizes and timing; the body and the answer leave this process in clear
only to the engine on loopback. Usage goes back as a receipt signed by the
identity key (``EndFrame.receipt``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from outpost.runner.engine_client import EngineClient, EngineError
from outpost.runner.relay import EngineEndpoint, engine_request
from outpost.runner.sse import line_batches
from outpost.runner.streams import OutboundStream
from outpost.sdk.e2e import (
    ChunkSealer,
    DecryptionError,
    E2EError,
    KeyMismatchError,
    OpenedRequest,
    Receipt,
    ReplayError,
    ReplayGuard,
    ResponseKey,
    RunnerKeys,
    StaleEnvelopeError,
    open_request,
    sign_receipt,
)
from outpost.sdk.errors import error_json
from outpost.sdk.sealed import (
    E2E_DECRYPT_FAILED,
    E2E_KEY_MISMATCH,
    E2E_MALFORMED,
    E2E_MISMATCH,
    E2E_REPLAY,
    E2E_STALE,
    HEAD,
    ResponseHead,
    SealedRequest,
    pieces,
)

__all__ = ["Opened", "Refused", "SealedRelay", "SealedWriter", "open_sealed", "usage_receipt"]

log = logging.getLogger("outpost.runner.sealed")

_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class Refused(Exception):
    """A sealed request this runner will not run; answered in clear (it reveals no content)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> str:
        return error_json(self.message, "invalid_request_error", self.code)


def _refused(exc: ValidationError | E2EError) -> Refused:
    # Order matters: StaleEnvelopeError is a ReplayError.
    if isinstance(exc, KeyMismatchError):
        return Refused(409, E2E_KEY_MISMATCH, f"sealed to another runner or key: {exc}")
    if isinstance(exc, StaleEnvelopeError):
        return Refused(400, E2E_STALE, f"sealed request outside the replay window: {exc}")
    if isinstance(exc, ReplayError):
        return Refused(400, E2E_REPLAY, "sealed request was already used (replay refused)")
    if isinstance(exc, DecryptionError):
        return Refused(400, E2E_DECRYPT_FAILED, "sealed request failed authentication")
    if isinstance(exc, ValidationError):
        return Refused(400, E2E_MALFORMED, "sealed request does not parse")
    return Refused(400, E2E_MALFORMED, f"sealed request refused: {type(exc).__name__}")


@dataclass(frozen=True)
class Opened:
    sealed: SealedRequest
    request: OpenedRequest
    payload: dict[str, Any]  # the OpenAI body, to send to the engine


def open_sealed(
    keys: RunnerKeys, runner_id: str, guard: ReplayGuard, body: str, *, model: str, stream: bool
) -> Opened:
    """Decrypt a tunnel body and check it against the clear fields; raise :class:`Refused`."""
    try:
        sealed = SealedRequest.model_validate_json(body)
        if sealed.model != model or sealed.stream != stream:
            raise Refused(400, E2E_MISMATCH, "tunnel frame and sealed request disagree")
        opened = open_request(keys, sealed.envelope, sealed.request_id, guard, runner_id=runner_id)
    except (ValidationError, E2EError) as exc:
        raise _refused(exc) from None
    try:
        payload = json.loads(opened.body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise Refused(400, E2E_MALFORMED, "sealed body is not a JSON object")
    # The clear fields are what the control plane admitted: the sealed body must agree.
    if payload.get("model") != sealed.model or bool(payload.get("stream", False)) != sealed.stream:
        raise Refused(
            400, E2E_MISMATCH, "sealed body disagrees with the clear model or stream flag"
        )
    limit = sealed.max_tokens
    for name in _MAX_TOKEN_FIELDS:
        value = payload.get(name)
        if value is not None and (limit is None or not isinstance(value, int) or value > limit):
            raise Refused(400, E2E_MISMATCH, f"sealed {name} exceeds the clear max_tokens")
    if limit is not None and all(payload.get(n) is None for n in _MAX_TOKEN_FIELDS):
        payload["max_tokens"] = limit
    return Opened(sealed, opened, payload)


class SealedWriter:
    """The answer as SSE events of sealed chunks: a head, pieces, an empty final chunk."""

    def __init__(self, response_key: ResponseKey, request_id: str, *, pad_to: int = 0) -> None:
        self._sealer = ChunkSealer(response_key, request_id, pad_to=pad_to)
        self.events = 0  # chunks sealed so far

    def _event(self, plaintext: bytes, final: bool = False) -> str:
        self.events += 1
        return f"data: {self._sealer.seal(plaintext, final=final)}\n\n"

    def head(self, status: int, content_type: str) -> str:
        head = ResponseHead(status=status, content_type=content_type[:128])
        return self._event(HEAD + head.model_dump_json().encode())

    def piece(self, data: bytes) -> list[str]:
        return [self._event(part) for part in pieces(data)]

    def final(self) -> str:
        return self._event(b"", final=True)


def usage_receipt(
    keys: RunnerKeys,
    runner_id: str,
    request_id: str,
    usage: tuple[int, int],
    started: float,
    finished: float,
) -> str:
    return sign_receipt(
        keys.identity,
        Receipt(
            request_id=request_id,
            runner_id=runner_id,
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            started_at=started,
            finished_at=max(finished, started),
        ),
    )


class SealedRelay:
    """``runner.relay.SealedHandler``: one sealed request over one tunnel stream."""

    def __init__(
        self,
        keys: RunnerKeys,
        runner_id: str,
        *,
        guard: ReplayGuard | None = None,
        pad_to: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.runner_id = runner_id
        # Envelopes sealed before this process started may have been seen by a previous one.
        self.guard = guard or ReplayGuard(not_before=clock(), clock=clock)
        self.pad_to = pad_to
        self._clock = clock

    async def __call__(
        self, out: OutboundStream, engine: EngineEndpoint, http: EngineClient
    ) -> None:
        started = self._clock()
        req = out.request
        try:
            opened = open_sealed(
                self.keys, self.runner_id, self.guard, out.body, model=req.model, stream=req.stream
            )
        except Refused as refused:
            log.warning("stream %d: sealed request refused: %s", out.id, refused.code)
            await out.start(refused.status, "application/json")
            await out.data(refused.body())
            await out.end()
            return
        request_id = opened.sealed.request_id
        writer = SealedWriter(opened.request.response_key, request_id, pad_to=self.pad_to)
        await out.start(200, "text/event-stream")
        pending, usage = await self._run(out, writer, engine, http, opened.payload)
        await out.data("".join([*pending, writer.final()]))
        await out.end(
            receipt=usage_receipt(
                self.keys, self.runner_id, request_id, usage, started, self._clock()
            )
        )

    async def _run(
        self,
        out: OutboundStream,
        writer: SealedWriter,
        engine: EngineEndpoint,
        http: EngineClient,
        payload: dict[str, Any],
    ) -> tuple[list[str], tuple[int, int]]:
        """Relay the engine's answer sealed; return the events still to send and (prompt,
        completion) tokens.

        Events are batched into as few data frames as the answer allows: a whole
        answer goes out with its head and final chunk in one frame, a stream's
        head with its first event.
        """
        req = out.request
        public_name = req.model
        if (upstream := engine.upstream_names.get(public_name)) is not None:
            payload["model"] = upstream
        wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        if req.stream:
            payload["stream_options"] = {
                **(payload.get("stream_options") or {}),
                "include_usage": True,
            }
        if engine.rewrite is not None:  # as the plain relay does: tool_choice made to hold
            payload = engine.rewrite(req.path, payload)
        usage = (0, 0)
        pending: list[str] = []
        try:
            headers, body = engine_request(engine, payload)
            async with http.request(
                "POST", engine.base_url.rstrip("/") + req.path, headers=headers, body=body
            ) as resp:
                ctype = resp.headers.get("content-type", "application/json").split(";")[0]
                pending.append(writer.head(resp.status, ctype))
                if req.stream and resp.status == 200:
                    async with aclosing(line_batches(resp.batches())) as batches:
                        async for lines in batches:
                            # Events that arrived together are sealed one by one but leave in one
                            # frame.
                            sealed = 0
                            for line in lines:
                                event, found = _stream_event(line, public_name, wants_usage)
                                usage = found or usage
                                if event is not None:
                                    pending += writer.piece(event)
                                    sealed += 1
                            if sealed:  # the head waits for the first event
                                await out.data("".join(pending))
                                pending = []
                else:
                    whole, found = _whole_body(await resp.read(), public_name)
                    usage = found or usage
                    pending += writer.piece(whole)
        except EngineError as exc:
            log.warning("engine request failed on sealed stream %d: %s", out.id, exc.kind)
            error = error_json(f"engine unreachable: {exc.kind}", "server_error", "engine_error")
            if writer.events == 0:
                pending.append(writer.head(502, "application/json"))
            else:
                # Mid-stream: the error travels sealed inside the stream, so the control plane
                # learns nothing (tests/runner/test_sealed.py); the runner's own log says it failed.
                out.failure = f"engine failed mid-stream: {exc.kind}"
            pending += writer.piece(error.encode())
        return pending, usage


def _usage(obj: dict[str, Any]) -> tuple[int, int] | None:
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    try:
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None


def _stream_event(
    line: str, public_name: str, wants_usage: bool
) -> tuple[bytes | None, tuple[int, int] | None]:
    """One engine SSE line → the event data to seal (or None) and any usage it carried."""
    if not line.startswith("data:"):
        return None, None
    data = line[5:].strip()
    if data == "[DONE]":
        return None, None  # the final sealed chunk ends the stream
    try:
        chunk = json.loads(data)
    except ValueError:
        return data.encode(), None
    if not isinstance(chunk, dict):
        return data.encode(), None
    usage = _usage(chunk)
    if usage is not None and not wants_usage:
        if not chunk.get("choices"):
            return None, usage  # the usage-only chunk asked for on the client's behalf
        chunk.pop("usage", None)
    if "model" in chunk:
        chunk["model"] = public_name
    chunk.pop("timings", None)
    return json.dumps(chunk, separators=(",", ":")).encode(), usage


def _whole_body(raw: bytes, public_name: str) -> tuple[bytes, tuple[int, int] | None]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw, None
    if not isinstance(obj, dict):
        return raw, None
    if "model" in obj:
        obj["model"] = public_name
    obj.pop("timings", None)
    return json.dumps(obj, separators=(",", ":")).encode(), _usage(obj)
