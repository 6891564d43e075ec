"""Each replica's inbox: one Redis stream that only its owner reads.

Everything replicas say to each other goes through inboxes, so one blocking
``XREAD`` per replica carries all of it, in order per sender:

==========  =========================  ==========================================
kind        from → to                  payload
==========  =========================  ==========================================
``open``    origin → holder            the request (runner, path, model, body...; ``admit``)
``admitted`` holder → origin           the holder's fair queue granted a slot (its wait)
``refused`` holder → origin            the holder's queue refused it (the error to answer)
``frame``   holder → origin            one tunnel frame, as ``sdk.protocol`` text
``lost``    holder → origin            the runner's stream is gone (a reason)
``credit``  origin → holder            the client consumed ``n`` characters
``reset``   origin → holder            the client went away (a reason)
``changed`` any → every other replica  re-read the registry now
``disconnect`` any → every other       close a runner's links (revocation)
``keys``    any → every other replica  forget these cached API keys / tenants' keys
==========  =========================  ==========================================

Senders use ``XADD ... NOMKSTREAM``: the owner creates its inbox and keeps it
alive with a TTL, so a message to a replica that died finds no stream and the
sender learns at once that nobody will answer (instead of writing into a key
that would never expire). The owner trims what it has read with ``XTRIM MINID``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

__all__ = ["Bus", "Keys", "Message"]


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one deployment, under one prefix."""

    prefix: str

    @property
    def replicas(self) -> str:
        return f"{self.prefix}:replicas"  # sorted set: replica id -> expiry (index only)

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}:replica:{replica_id}"  # JSON, with a TTL: the liveness truth

    def inbox(self, replica_id: str) -> str:
        return f"{self.prefix}:inbox:{replica_id}"

    def rate(self, key: str) -> str:
        return f"{self.prefix}:rate:{key}"


@dataclass(frozen=True)
class Message:
    kind: str
    request: str  # the relayed request's key; empty for replica-wide messages
    payload: str  # frame text for "frame", JSON otherwise

    def json(self) -> dict[str, Any]:
        return json.loads(self.payload) if self.payload else {}


class Bus:
    def __init__(self, redis: Redis, keys: Keys, replica_id: str, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.replica_id = replica_id
        self.inbox = keys.inbox(replica_id)
        self._ttl_ms = max(int(ttl_s * 1000), 1000)
        self._last = "0-0"

    async def open(self) -> None:
        """Create this replica's inbox (senders never create one) and set its TTL."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.inbox, {"k": "hello", "r": "", "p": ""})
            pipe.pexpire(self.inbox, self._ttl_ms)
            await pipe.execute()

    async def keep_alive(self) -> None:
        """Refresh the inbox's TTL; re-create it if it expired (this process stalled past the
        TTL)."""
        if not await self.redis.pexpire(self.inbox, self._ttl_ms):
            await self.open()

    async def close(self) -> None:
        await self.redis.delete(self.inbox)

    async def send(
        self, to: str, kind: str, request: str = "", payload: str | dict[str, Any] = ""
    ) -> bool:
        """Append to ``to``'s inbox; False when it has none (that replica is gone)."""
        text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        entry = await self.redis.xadd(
            self.keys.inbox(to), {"k": kind, "r": request, "p": text}, nomkstream=True
        )
        return entry is not None

    async def receive(self, block_s: float, count: int = 256) -> list[Message]:
        """The next messages of this inbox, waiting up to ``block_s``; read ones are trimmed."""
        # XREAD's reply over RESP2 (this client's protocol): [(stream, [(entry id, fields)])];
        # redis-py's return type also covers RESP3's mapping, which this connection never gets.
        reply = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
            await self.redis.xread(
                {self.inbox: self._last}, count=count, block=max(int(block_s * 1000), 1)
            ),
        )
        messages: list[Message] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._last = _text(entry_id)
                f = {_text(k): _text(v) for k, v in fields.items()}
                if f.get("k") and f["k"] != "hello":
                    messages.append(Message(f["k"], f.get("r", ""), f.get("p", "")))
        if messages or reply:
            await self.redis.xtrim(self.inbox, minid=self._last, approximate=False)
        return messages


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
