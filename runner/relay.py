"""Relay one request from the tunnel to the engine on loopback, and the answer back.

The runner reads token usage from the engine's answer (asking the engine for
it on streams even when the client did not), so accounting works without the
control plane parsing bodies — and, later, for end-to-end encrypted bodies.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from outpost.runner.engine_client import EngineClient, EngineError, EngineResponse
from outpost.runner.sse import line_batches
from outpost.runner.streams import OutboundStream
from outpost.runner.tracing import engine_trace_headers
from outpost.sdk.errors import error_json
from outpost.sdk.protocol import Usage

__all__ = ["EngineEndpoint", "SealedHandler", "engine_request", "relay"]

log = logging.getLogger("outpost.runner.relay")


@dataclass(frozen=True)
class EngineEndpoint:
    base_url: str
    headers: dict[str, str]
    # Public model name -> the engine's name for it, only where they differ; the fleet's
    # engines are asked for the public name, so theirs is empty and the body goes as it is.
    upstream_names: Mapping[str, str] = field(default_factory=dict)
    # The engine adapter's last word on a body (path, payload): tool_choice made to hold.
    rewrite: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
    # The public name answers carry when the request named a replica's runner-side name
    # (deploy.v1 ``served_name``); None: the name the request carried.
    reply_name: str | None = None


def _usage(obj: object) -> Usage | None:
    if isinstance(obj, dict) and isinstance(u := obj.get("usage"), dict):
        try:
            return Usage(
                prompt_tokens=int(u.get("prompt_tokens") or 0),
                completion_tokens=int(u.get("completion_tokens") or 0),
            )
        except (TypeError, ValueError):
            return None
    return None


#: Handles a sealed (end-to-end) request: ``runner.e2e.SealedRelay``.
SealedHandler = Callable[[OutboundStream, EngineEndpoint, EngineClient], Awaitable[None]]


def engine_request(engine: EngineEndpoint, payload: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """The headers and body of one JSON request to the engine (its API key header included)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return {"Content-Type": "application/json", **engine.headers}, body


async def relay(
    out: OutboundStream,
    engine: EngineEndpoint,
    http: EngineClient,
    sealed: SealedHandler | None = None,
) -> None:
    req = out.request
    if req.sealed:
        if sealed is None:
            await out.start(400, "application/json")
            await out.data(
                error_json(
                    "this runner has no end-to-end key", "invalid_request_error", "e2e_unsupported"
                )
            )
            await out.end()
            return
        await sealed(out, engine, http)
        return
    try:
        payload = json.loads(out.body)
        if not isinstance(payload, dict):
            raise TypeError("body is not an object")
    except (TypeError, ValueError) as exc:
        await out.start(400, "application/json")
        await out.data(error_json(f"invalid body: {exc}", "invalid_request_error"))
        await out.end()
        return
    public_name = engine.reply_name or req.model
    if (upstream := engine.upstream_names.get(req.model)) is not None:
        payload["model"] = upstream
    client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    if req.stream:
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    if engine.rewrite is not None:
        payload = engine.rewrite(req.path, payload)
    url = engine.base_url.rstrip("/") + req.path
    headers, body = engine_request(engine, payload)
    headers.update(engine_trace_headers())  # the request's trace, when traces are on
    try:
        async with http.request("POST", url, headers=headers, body=body) as resp:
            ctype = resp.headers.get("content-type", "application/json").split(";")[0]
            if req.stream and resp.status == 200:
                await out.start(200, "text/event-stream")
                usage = await _relay_sse(out, resp, public_name, client_wants_usage)
                await out.end(usage)
            else:
                raw = await resp.read()
                text = _rename_model(raw.decode(errors="replace"), public_name)
                await out.start(resp.status, ctype)
                await out.data(text)
                try:
                    usage = _usage(json.loads(text))
                except ValueError:
                    usage = None
                await out.end(usage)
    except EngineError as exc:
        if out.closed:
            log.warning("engine request failed on stream %d: %s", out.id, exc)
            return
        if out.started:
            # The engine died mid-answer. The status line is out, so this stream ends with an
            # error (the client gets engine_error); the connection and its other streams carry on.
            out.failure = f"engine failed mid-stream: {exc.kind}"
            await out.end(error=out.failure)
            return
        log.warning("engine request failed on stream %d: %s", out.id, exc)
        # Before response_start the control plane can still fail over.
        try:
            await out.start(502, "application/json")
        except Exception:  # noqa: BLE001 - connection gone; nothing to tell
            return
        await out.end(error=f"engine unreachable: {exc.kind}")


#: A JSON object's ``"model"`` member. In JSON text only a key is followed by ``:``, so
#: this never matches inside a string (a quote in a string is escaped).
_MODEL_MEMBER = re.compile(r'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


async def _relay_sse(
    out: OutboundStream, resp: EngineResponse, public_name: str, client_wants_usage: bool
) -> Usage | None:
    usage: Usage | None = None
    model = '"model":' + json.dumps(public_name)  # the member every event goes out with
    async with aclosing(line_batches(resp.batches())) as batches:
        async for lines in batches:
            # Events that arrived together leave together: one data frame, one client write.
            events: list[str] = []
            for line in lines:
                event, found = _sse_event(line, model, client_wants_usage)
                usage = found or usage
                if event is not None:
                    events.append(event)
            if events:
                await out.data("".join(events))
    return usage


def _sse_event(line: str, model: str, client_wants_usage: bool) -> tuple[str | None, Usage | None]:
    """One engine SSE line → the event to send on (or None) and any usage it carried.

    ``model`` is the ``"model":"<public name>"`` member. An ordinary content event is
    not parsed (issue 24): only its model member is put right, as text. An event that
    names ``usage`` or ``timings`` anywhere (the final ones; or a token that happens to
    spell the key: slower, same result) goes through JSON.
    """
    if not line.startswith("data:"):
        return None, None  # comments, keep-alives and blank separators
    data = line[5:].strip()
    if data == "[DONE]":
        return "data: [DONE]\n\n", None
    if '"usage"' not in data and '"timings"' not in data:
        if model not in data:
            # Asked for the public name, an engine may still answer with its own (llama.cpp:
            # the file path); a function, so a backslash in the name is not a group reference.
            data = _MODEL_MEMBER.sub(lambda _: model, data, count=1)
        return "data: " + data + "\n\n", None
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        return f"data: {data}\n\n", None
    usage = _usage(chunk)
    if usage is not None:
        if not client_wants_usage and not chunk.get("choices"):
            return None, usage  # the usage-only chunk we asked for on the client's behalf
        if not client_wants_usage:
            chunk.pop("usage", None)
    if "model" in chunk:
        chunk["model"] = json.loads(model[8:])
    chunk.pop("timings", None)  # llama.cpp extension; internal detail
    return "data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n", usage


def _rename_model(body: str, public_name: str) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = public_name
        obj.pop("timings", None)
        return json.dumps(obj, separators=(",", ":"))
    return body
