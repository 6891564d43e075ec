"""Relay one request from the tunnel to the engine on loopback, and the answer back.

The runner reads token usage from the engine's answer (asking the engine for
it on streams even when the client did not), so accounting works without the
control plane parsing bodies — and, later, for end-to-end encrypted bodies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import httpx

from runner.sse import line_batches
from runner.streams import OutboundStream
from sdk.protocol import Usage

__all__ = ["EngineEndpoint", "SealedHandler", "relay"]

log = logging.getLogger("outpost.runner.relay")


@dataclass(frozen=True)
class EngineEndpoint:
    base_url: str
    headers: dict[str, str]
    # public model name -> the name the engine knows it by
    upstream_names: dict[str, str]


def _usage(obj: object) -> Usage | None:
    if isinstance(obj, dict) and isinstance(u := obj.get("usage"), dict):
        try:
            return Usage(prompt_tokens=int(u.get("prompt_tokens") or 0),
                         completion_tokens=int(u.get("completion_tokens") or 0))
        except (TypeError, ValueError):
            return None
    return None


#: Handles a sealed (end-to-end) request: ``runner.e2e.SealedRelay``.
SealedHandler = Callable[[OutboundStream, EngineEndpoint, httpx.AsyncClient], Awaitable[None]]


async def relay(out: OutboundStream, engine: EngineEndpoint, http: httpx.AsyncClient,
                sealed: SealedHandler | None = None) -> None:
    req = out.request
    if req.sealed:
        if sealed is None:
            await out.start(400, "application/json")
            await out.data(json.dumps({"error": {"message": "this runner has no end-to-end key",
                                                 "type": "invalid_request_error", "code": "e2e_unsupported"}}))
            await out.end()
            return
        await sealed(out, engine, http)
        return
    try:
        payload = json.loads(out.body)
        if not isinstance(payload, dict):
            raise ValueError("body is not an object")
    except ValueError as exc:
        await out.start(400, "application/json")
        await out.data(json.dumps({"error": {"message": f"invalid body: {exc}", "type": "invalid_request_error"}}))
        await out.end()
        return
    public_name = req.model
    payload["model"] = engine.upstream_names.get(public_name, public_name)
    client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    if req.stream:
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    url = engine.base_url.rstrip("/") + req.path
    try:
        async with http.stream("POST", url, json=payload, headers=engine.headers, timeout=None) as resp:
            ctype = resp.headers.get("content-type", "application/json").split(";")[0]
            if req.stream and resp.status_code == 200:
                await out.start(200, "text/event-stream")
                usage = await _relay_sse(out, resp, public_name, client_wants_usage)
                await out.end(usage)
            else:
                raw = await resp.aread()
                body = _rename_model(raw.decode(errors="replace"), public_name)
                await out.start(resp.status_code, ctype)
                await out.data(body)
                try:
                    usage = _usage(json.loads(body))
                except ValueError:
                    usage = None
                await out.end(usage)
    except httpx.HTTPError as exc:
        log.warning("engine request failed on stream %d: %s", out.id, exc)
        if out.closed:
            return
        # Before response_start the control plane can still fail over.
        try:
            await out.start(502, "application/json")
        except Exception:  # noqa: BLE001 - connection gone; nothing to tell
            return
        await out.end(error=f"engine unreachable: {type(exc).__name__}")


async def _relay_sse(out: OutboundStream, resp: httpx.Response, public_name: str,
                     client_wants_usage: bool) -> Usage | None:
    usage: Usage | None = None
    async with aclosing(line_batches(resp)) as batches:
        async for lines in batches:
            # Events that arrived together leave together: one data frame, one client write.
            events: list[str] = []
            for line in lines:
                event, found = _sse_event(line, public_name, client_wants_usage)
                usage = found or usage
                if event is not None:
                    events.append(event)
            if events:
                await out.data("".join(events))
    return usage


def _sse_event(line: str, public_name: str, client_wants_usage: bool) -> tuple[str | None, Usage | None]:
    """One engine SSE line → the event to send on (or None) and any usage it carried."""
    if not line.startswith("data:"):
        return None, None  # comments, keep-alives and blank separators
    data = line[5:].strip()
    if data == "[DONE]":
        return "data: [DONE]\n\n", None
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
        chunk["model"] = public_name
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
