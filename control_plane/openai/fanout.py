"""Several choices (``n`` > 1) as several requests, each admitted, billed and recorded alone.

The fair scheduler admits, and usage prices, one sequence per request
(docs/api.md "Several choices"): a request for ``n`` choices becomes ``n``
requests for one, each its own :class:`~control_plane.openai.lifecycle.RequestLife`
(its own queue turn, runner, record and price), served side by side. Their
answers are merged into one: choice ``i`` comes from request ``i`` and says
``index: i``, streamed or not; the usage reported is the sum of what was billed
(each request pays for its prompt). A ``seed`` is offset by the choice's index,
or every choice would be the same text.

A request that fails before its answer starts fails the whole call (the others
are closed by their own lifecycles: what ran is recorded and billed as it is).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import Response
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from outpost.control_plane.db.models import new_id
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.disconnect import client_gone
from outpost.control_plane.openai.early_stream import respond_early
from outpost.control_plane.openai.relay_response import RelayResponse
from outpost.control_plane.openai.serving import serve_inference
from outpost.control_plane.state import AppState

__all__ = ["SharedGone", "serve_choices"]

_DONE = "data: [DONE]\n\n"


class SharedGone:
    """One watch on the client's connection that every choice's request waits on."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(client_gone(self._receive))
        await asyncio.shield(self._task)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def split_call(call: InferenceCall, body: dict[str, Any], n: int) -> list[InferenceCall]:
    """``n`` one-choice calls for a call that asks for ``n`` choices (each its own record id)."""
    calls = []
    for i in range(n):
        one = {k: v for k, v in body.items() if k not in ("n", "best_of")}
        if isinstance(seed := body.get("seed"), int):
            one["seed"] = (seed + i) % 2**63  # a different seed per choice, still reproducible
        text = json.dumps(one, ensure_ascii=False, separators=(",", ":"))
        # Choice 0's record has the request's id (x-request-id); the others, their own.
        rid = call.request_id if i == 0 else new_id("req")
        calls.append(dataclasses.replace(call, body=text, request_id=rid))
    return calls


async def serve_choices(
    state: AppState, call: InferenceCall, body: dict[str, Any], n: int, gone: SharedGone | None
) -> Response:
    """The merged answer of ``n`` one-choice requests. A stream whose choices have not all
    started within ``stream_headers_after_s`` gets its headers and keep-alives meanwhile."""
    merged = _serve_merged(state, call, body, n, gone)
    if not call.stream:
        return await merged
    return await respond_early(
        merged,
        after_s=state.settings.stream_headers_after_s,
        interval_s=state.settings.stream_keepalive_s,
        headers={"x-request-id": call.request_id, "x-outpost-choices": str(n)},
    )


async def _serve_merged(
    state: AppState, call: InferenceCall, body: dict[str, Any], n: int, gone: SharedGone | None
) -> Response:
    calls = split_call(call, body, n)
    if gone is not None:
        calls = [dataclasses.replace(c, client_gone=gone.wait) for c in calls]
    # A streamed choice is read as soon as it opens: its request then ends, and frees its slot,
    # while the others still queue. Waiting for every choice to open before reading any would
    # deadlock a runner with fewer free slots than choices.
    pumping = _Pumping() if call.stream else None
    try:
        results = await asyncio.gather(
            *(_open(state, c, i, pumping) for i, c in enumerate(calls)), return_exceptions=True
        )
    except BaseException:
        if pumping is not None:
            await pumping.stop()
        if gone is not None:
            gone.stop()
        raise
    responses = [r for r in results if isinstance(r, Response)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    refused = next((r for r in responses if r.status_code >= 400), None)
    if failure is not None or refused is not None:
        if pumping is not None:
            await pumping.stop()
        await _close(responses)
        if gone is not None:
            gone.stop()
        if failure is not None:
            raise failure
        assert refused is not None
        return refused
    headers = {
        k: v for k, v in responses[0].headers.items() if k.startswith("x-") or k == "cache-control"
    }
    headers["x-outpost-choices"] = str(n)
    if pumping is not None:
        relays = [r for r in responses if isinstance(r, RelayResponse)]
        return MergedStream(relays, pumping, gone, headers=headers)
    if gone is not None:
        gone.stop()
    merged = merge_bodies([bytes(r.body) for r in responses])
    return Response(merged, media_type="application/json", headers=headers)


class _Pumping:
    """The choices' SSE bodies being read into one queue, each from the moment it opens."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()
        self.tasks: list[asyncio.Future[None]] = []

    def start(self, i: int, relay: RelayResponse) -> None:
        self.tasks.append(asyncio.ensure_future(_pump(i, relay, self.queue.put)))

    async def stop(self) -> None:
        """Stop reading: each choice's lifecycle records its request as it ended."""
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _open(state: AppState, call: InferenceCall, i: int, pumping: _Pumping | None) -> Response:
    response = await serve_inference(state, call, early_headers=False)
    if pumping is not None and isinstance(response, RelayResponse):
        pumping.start(i, response)
    return response


async def _close(responses: list[Response]) -> None:
    """Responses that will not be sent: their lifecycles settle them (a relay as cancelled)."""
    for r in responses:
        if r.background is not None:
            await r.background()


def merge_bodies(bodies: list[bytes]) -> bytes:
    """Whole answers → one: choice ``i`` of answer ``i``; usage summed (each was billed)."""
    parsed = [json.loads(b) for b in bodies]
    merged = dict(parsed[0])
    choices: list[Any] = []
    usage: dict[str, int] = {}
    for i, answer in enumerate(parsed):
        for choice in answer.get("choices") or []:
            choices.append({**choice, "index": i})
        _add_usage(usage, answer.get("usage"))
    merged["choices"] = choices
    if usage:
        merged["usage"] = usage
    return json.dumps(merged, ensure_ascii=False, separators=(",", ":")).encode()


def _add_usage(total: dict[str, int], usage: object) -> None:
    if not isinstance(usage, dict):
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


class MergedStream(StreamingResponse):
    """The SSE answers of ``n`` one-choice requests as one stream with an ``index`` per choice."""

    def __init__(
        self,
        relays: list[RelayResponse],
        pumping: _Pumping,
        gone: SharedGone | None,
        headers: dict[str, str],
    ) -> None:
        super().__init__(iter(()), media_type="text/event-stream", headers=headers)
        self.relays, self.pumping, self.gone = relays, pumping, gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        watcher = asyncio.ensure_future(self.gone.wait()) if self.gone is not None else None
        merger = _Merger(len(self.relays))
        try:
            await self._relay(self.pumping.queue, merger, send, watcher)
        finally:
            await self.pumping.stop()
            if watcher is not None:
                watcher.cancel()
            if self.gone is not None:
                self.gone.stop()
            await _close(list(self.relays))

    async def _relay(
        self,
        queue: asyncio.Queue[tuple[int, str | None]],
        merger: _Merger,
        send: Send,
        watcher: asyncio.Future[None] | None,
    ) -> None:
        open_ = len(self.relays)
        while open_:
            getter = asyncio.ensure_future(queue.get())
            waits: set[asyncio.Future[Any]] = {getter} | ({watcher} if watcher else set())
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return  # the client left: the pumps are cancelled, lifecycles record it
            i, chunk = getter.result()
            if chunk is None:
                open_ -= 1
                continue
            out, failed = merger.feed(i, chunk)
            if failed:  # an error event ends the stream, as it does for one choice
                last = (out + _DONE).encode()
                await send({"type": "http.response.body", "body": last, "more_body": False})
                return
            if out:
                await send({"type": "http.response.body", "body": out.encode(), "more_body": True})
        tail = merger.tail()
        await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})


async def _pump(
    i: int, relay: RelayResponse, put: Callable[[tuple[int, str | None]], Awaitable[None]]
) -> None:
    try:
        async for chunk in relay.body_iterator:
            await put((i, chunk if isinstance(chunk, str) else bytes(chunk).decode()))
    finally:
        await put((i, None))


class _Merger:
    """SSE events of choice ``i`` → the merged stream's events (``index: i``, one id, one usage)."""

    def __init__(self, n: int) -> None:
        self.buffers = [""] * n
        self.id: str | None = None
        self.usage: dict[str, int] = {}
        self.last: dict[str, Any] | None = None  # a usage chunk's shape, for the merged one

    def feed(self, i: int, chunk: str) -> tuple[str, bool]:
        self.buffers[i] += chunk
        *events, self.buffers[i] = self.buffers[i].split("\n\n")
        out: list[str] = []
        for event in events:
            text, failed = self._event(i, event)
            if text:
                out.append(text)
            if failed:
                return "".join(out), True
        return "".join(out), False

    def _event(self, i: int, event: str) -> tuple[str, bool]:
        if not event.startswith("data:"):
            return (event + "\n\n" if event.strip() else ""), False  # comments pass
        data = event[5:].strip()
        if data == "[DONE]":
            return "", False
        try:
            obj = json.loads(data)
        except ValueError:
            return event + "\n\n", False
        if not isinstance(obj, dict):
            return event + "\n\n", False
        if "error" in obj:
            return event + "\n\n", True
        self.id = self.id or obj.get("id")
        if self.id is not None and "id" in obj:
            obj["id"] = self.id
        choices = obj.get("choices")
        if isinstance(obj.get("usage"), dict) and not choices:
            _add_usage(self.usage, obj["usage"])
            self.last = obj
            return "", False
        if isinstance(choices, list):
            for c in choices:
                if isinstance(c, dict):
                    c["index"] = i
        obj.pop("usage", None)  # reported once, summed, at the end
        return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n", False

    def tail(self) -> str:
        if self.last is None:
            return _DONE
        last = {**self.last, "usage": self.usage, "choices": []}
        return "data: " + json.dumps(last, separators=(",", ":")) + "\n\n" + _DONE
