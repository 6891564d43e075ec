"""A SIMULATED runner for routing benchmarks: the real tunnel client, a fake engine.

:class:`SimulatedRunner` enrolls with a real control plane and connects with
the runner's own :class:`runner.tunnel.TunnelClient`, so the control plane
sees exactly what a real runner sends (hello, status frames, response
frames). Only the engine is simulated, by :class:`SimulatedEngine`, a timing
model of an LLM server with a prefix cache:

* ``slots`` requests run at once; the rest wait (llama.cpp ``--parallel``,
  vLLM ``max_num_seqs``);
* the prompt tokens *not* found in the prefix cache are prefilled at
  ``prefill_tps``, one prefill at a time (prefill is compute-bound);
* then tokens stream at ``decode_tps`` per request (batched decoding: a
  request's speed does not depend on how many others decode with it);
* the prefix cache keeps the token sequences of recent requests (prompt +
  answer) up to ``kv_tokens`` tokens, least recently used evicted first; a
  request reuses its longest common prefix with any cached sequence.

Tokens are whitespace-separated words, with one marker token per message.
Nothing here is a measurement of a real engine; the parameters are stated in
every result table.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx

from outpost.runner.identity import enroll
from outpost.runner.streams import OutboundStream
from outpost.runner.tunnel import TunnelClient
from outpost.sdk.protocol import StatusFrame, Usage

__all__ = ["SimParams", "SimulatedEngine", "SimulatedRunner", "chat_tokens"]


@dataclass(frozen=True)
class SimParams:
    slots: int = 4
    prefill_tps: float = 500.0
    decode_tps: float = 12.5
    kv_tokens: int = 16384

    def describe(self) -> str:
        return (
            f"{self.slots} slots, prefill {self.prefill_tps:g} tok/s (one at a time), decode "
            f"{self.decode_tps:g} tok/s per request, prefix cache {self.kv_tokens} tokens (LRU)"
        )


def chat_tokens(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    out: list[str] = []
    for m in messages:
        out.append(f"<{m.get('role')}>")
        out.extend(str(m.get("content") or "").split())
    return tuple(out)


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    # Binary search on slice equality: the comparisons run in C, so the
    # simulator's own CPU time stays small next to what it simulates.
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SimulatedEngine:
    def __init__(self, params: SimParams) -> None:
        self.params = params
        self._slots = asyncio.Semaphore(params.slots)
        self._prefill = asyncio.Lock()
        self._cache: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        self._ids = itertools.count()
        self.cached_tokens = 0
        self.running = self.waiting = 0
        self.prompt_tokens = self.prompt_tokens_cached = self.completed = 0

    # --- prefix cache --------------------------------------------------------------

    def _lookup(self, prompt: tuple[str, ...]) -> int:
        best, best_id = 0, None
        for cid, seq in self._cache.items():
            n = _common_prefix(prompt, seq)
            if n > best:
                best, best_id = n, cid
        if best_id is not None:
            self._cache.move_to_end(best_id)
        return best

    def _insert(self, seq: tuple[str, ...]) -> None:
        # A cached sequence that is a prefix of the new one is subsumed by it.
        for cid, old in list(self._cache.items()):
            if len(old) <= len(seq) and seq[: len(old)] == old:
                del self._cache[cid]
                self.cached_tokens -= len(old)
        self._cache[next(self._ids)] = seq
        self.cached_tokens += len(seq)
        while self.cached_tokens > self.params.kv_tokens and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self.cached_tokens -= len(old)

    # --- requests ---------------------------------------------------------------------

    async def handle(self, out: OutboundStream) -> None:
        body = json.loads(out.body)
        prompt = chat_tokens(body.get("messages") or [])
        n_out = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        self.waiting += 1
        async with self._slots:
            self.waiting -= 1
            self.running += 1
            try:
                hit = self._lookup(prompt)
                self.prompt_tokens += len(prompt)
                self.prompt_tokens_cached += hit
                async with self._prefill:
                    await asyncio.sleep((len(prompt) - hit) / self.params.prefill_tps)
                words = await self._stream(out, body, n_out)
                self._insert(prompt + ("<assistant>", *words))
                usage = Usage(prompt_tokens=len(prompt), completion_tokens=n_out)
                if (body.get("stream_options") or {}).get("include_usage"):
                    await out.data(
                        _sse(
                            {
                                "object": "chat.completion.chunk",
                                "choices": [],
                                "usage": {
                                    **usage.model_dump(),
                                    "total_tokens": len(prompt) + n_out,
                                },
                            }
                        )
                    )
                await out.data("data: [DONE]\n\n")
                await out.end(usage)
                self.completed += 1
            finally:
                self.running -= 1

    async def _stream(self, out: OutboundStream, body: dict[str, Any], n_out: int) -> list[str]:
        await out.start(200, "text/event-stream")
        created, model = int(time.time()), body.get("model", "sim")
        words = []
        for i in range(n_out):
            if i:
                await asyncio.sleep(1 / self.params.decode_tps)
            words.append(f"w{i}")
            await out.data(
                _sse(
                    {
                        "id": "chatcmpl-sim",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [
                            {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}
                        ],
                    }
                )
            )
        await out.data(
            _sse(
                {
                    "id": "chatcmpl-sim",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
                }
            )
        )
        return words

    def status(self) -> StatusFrame:
        kv = min(self.cached_tokens / self.params.kv_tokens, 1.0)
        return StatusFrame(
            running=self.running, waiting=self.waiting, kv_cache_usage=kv, completed=self.completed
        )


def _sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


class SimulatedRunner:
    """Enrolls, connects through the real tunnel client, and answers with a
    :class:`SimulatedEngine`."""

    def __init__(
        self,
        control_plane: str,
        token: str,
        params: SimParams,
        *,
        model: str = "sim-chat",
        usd_per_hour: float = 1.0,
    ) -> None:
        self.control_plane, self.token, self.model = control_plane, token, model
        self.engine = SimulatedEngine(params)
        self.usd_per_hour = usd_per_hour
        self.runner_id: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, http: httpx.AsyncClient) -> None:
        identity = await enroll(self.control_plane, self.token, http)
        self.runner_id = identity.runner_id
        tunnel = TunnelClient(
            identity=identity,
            on_stream=self.engine.handle,
            status=self.engine.status,
            connections=1,
            hello_fields=lambda: {
                "models": [{"name": self.model, "engine": "simulator", "endpoints": ["chat"]}],
                "capacity": self.engine.params.slots,
                "labels": {"kind": "simulated"},
                "cost": {"usd_per_hour": self.usd_per_hour},
                "hardware": {},
            },
        )
        self._task = asyncio.create_task(tunnel.run(), name=f"sim-{self.runner_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
