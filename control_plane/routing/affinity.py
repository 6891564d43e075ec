"""Prefix affinity: which runner last served a conversation's leading prompt.

An engine with prefix caching (llama.cpp's ``cache_prompt``, vLLM's
automatic prefix caching) skips the prefill of a prompt prefix it still holds.
A multi-turn conversation resends its whole history every turn, so sending
turn *n + 1* to the runner that served turn *n* turns most of the prefill
into a cache hit. The router asks this table where a conversation went last;
:mod:`control_plane.routing.routing` bounds the load it may add to one runner.

Keys are SHA-256 digests over tenant, model and the leading prompt; no text
is stored. The tenant is part of the key so that one tenant's prompts never
steer another tenant's routing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from outpost.control_plane.openai.protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["AffinityTable", "affinity_keys"]

#: Characters of a completion prompt per affinity block; blocks double in size.
BLOCK_CHARS = 256
_MAX_BLOCKS = 12  # 256 chars .. 512 KiB
#: The leading prompt is hashed up to this many characters (bounds the CPU spent).
_MAX_LEADING_CHARS = 64 * 1024


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def affinity_keys(
    tenant_id: str, request: ChatCompletionRequest | CompletionRequest
) -> tuple[str, ...]:
    """Keys for ``request``, most specific first; empty when it has nothing to key on.

    * ``prompt_cache_key`` (an OpenAI request field) names the conversation
      explicitly and wins.
    * Chat: the messages up to and including the first user message — system
      prompt plus opening question — identify a conversation, and every later
      turn starts with them.
    * Completions: a growing prompt keeps its beginning, so the prompt's first
      256, 512, 1024, ... characters are keys, the longest first; turn *n + 1*
      finds the longest block turn *n* left.
    """
    model = request.model
    explicit = (request.model_extra or {}).get("prompt_cache_key")
    if isinstance(explicit, str) and explicit:
        return (_digest("key", tenant_id, model, explicit),)
    if isinstance(request, ChatCompletionRequest):
        leading: list[object] = []
        for m in request.messages:
            leading.append([m.role, m.content])
            if m.role == "user":
                break
        text = json.dumps(leading, separators=(",", ":"), ensure_ascii=False)[:_MAX_LEADING_CHARS]
        return (_digest("chat", tenant_id, model, text),)
    prompt = _one_prompt(request.prompt)
    if not prompt:
        return ()
    keys = []
    n = BLOCK_CHARS
    for _ in range(_MAX_BLOCKS):
        if len(prompt) < n:
            break
        keys.append(_digest("prompt", tenant_id, model, prompt[:n]))
        n *= 2
    if not keys:  # shorter than one block: only an identical prompt will match
        keys.append(_digest("prompt", tenant_id, model, prompt))
    return tuple(reversed(keys))


def _one_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str:
    """The request's one prompt as text (token ids written out, so a growing id prompt keeps its
    beginning too); empty for several prompts (refused anyway, openai/caps.py)."""
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if prompt and all(isinstance(t, int) for t in prompt):
        return "ids:" + ",".join(str(t) for t in prompt)
    return ""


class AffinityTable:
    """key → runner id, least recently used evicted first, entries expire after ``ttl_s``.

    An engine's cache is finite too: after ``ttl_s`` without a turn, the
    runner has most likely reused the slot, and the affinity is worth nothing.
    """

    def __init__(
        self,
        ttl_s: float = 600.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[str]) -> str | None:
        now = self._clock()
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            runner_id, at = entry
            if now - at > self.ttl_s:
                del self._entries[key]
                continue
            return runner_id
        return None

    def remember(self, keys: Sequence[str], runner_id: str) -> None:
        now = self._clock()
        for key in keys:
            self._entries[key] = (runner_id, now)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
