"""Token quotas and in-flight slots shared by every replica, in Redis.

The arithmetic of ``services/quotas.py``, with each step one Lua script, so
two replicas can never both take a window's last tokens: the script reads
Redis's clock (``TIME``), picks the window, checks every counter and adds to
all of them or to none. Counters expire a minute after their window ends.
Needs a single Redis (not Redis Cluster: the window keys are built in the
script). If Redis cannot be reached, the store falls back to the counters of
this replica and logs it, as the rate limiter does: limits then hold per
replica rather than refusing every request while Redis is down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from outpost.control_plane.services.quotas import (
    CONCURRENCY_TTL_S,
    Counter,
    MemoryQuotaStore,
    Reserved,
)

__all__ = ["RedisQuotaStore"]

log = logging.getLogger("outpost.cluster")

# KEYS: counter names; ARGV[1]: amount; then limit, seconds for each counter.
# Returns {failed (0: none, else 1-based), now (string), used_1, index_1, used_2, index_2, ...}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amount = tonumber(ARGV[1])
local used, idx, fail = {}, {}, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local secs = tonumber(ARGV[2 * i + 1])
  idx[i] = math.floor(now / secs)
  used[i] = tonumber(redis.call('GET', KEYS[i] .. ':' .. idx[i]) or '0')
  if fail == 0 and used[i] + amount > limit then fail = i end
end
if fail == 0 then
  for i = 1, #KEYS do
    local k = KEYS[i] .. ':' .. idx[i]
    used[i] = redis.call('INCRBY', k, amount)
    redis.call('EXPIRE', k, tonumber(ARGV[2 * i + 1]) + 60)
  end
end
local out = {fail, tostring(now)}
for i = 1, #KEYS do
  table.insert(out, used[i])
  table.insert(out, idx[i])
end
return out
"""

# KEYS: window keys; ARGV[1]: delta. Only windows that still exist; never below zero.
_ADJUST = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], ARGV[1]) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0
"""

# KEYS[1]: slots; ARGV[1]: limit, ARGV[2]: ttl. Returns 1 if a slot was taken.
_ENTER = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return 1
"""

_LEAVE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""


class RedisQuotaStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._prefix = f"{prefix}:quota"
        self._reserve = redis.register_script(_RESERVE)
        self._adjust = redis.register_script(_ADJUST)
        self._enter = redis.register_script(_ENTER)
        self._leave = redis.register_script(_LEAVE)
        self._fallback = MemoryQuotaStore()
        self._degraded = False

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def _failed(self, exc: Exception) -> None:
        if not self._degraded:
            log.warning("quotas fall back to this replica alone: Redis failed (%s)", exc)
            self._degraded = True

    def _ok(self) -> None:
        if self._degraded:
            log.info("quotas are shared through Redis again")
            self._degraded = False

    async def reserve(self, counters: Sequence[Counter], amount: int) -> Reserved:
        args: list[int] = [amount]
        for c in counters:
            args += [c.limit, c.seconds]
        try:
            out = await self._reserve(keys=[self._key(c.name) for c in counters], args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return self._fallback.reserve_now(counters, amount)
        self._ok()
        failed = int(out[0])
        now = float(out[1].decode() if isinstance(out[1], bytes) else out[1])
        pairs = [int(v) for v in out[2:]]
        return Reserved(failed - 1 if failed else None, tuple(pairs[0::2]), tuple(pairs[1::2]), now)

    async def adjust(self, counters: Sequence[Counter], indexes: Sequence[int], delta: int) -> None:
        keys = [f"{self._key(c.name)}:{i}" for c, i in zip(counters, indexes, strict=True)]
        try:
            await self._adjust(keys=keys, args=[delta])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            await self._fallback.adjust(counters, indexes, delta)

    async def enter(self, name: str, limit: int) -> bool:
        try:
            taken = await self._enter(keys=[self._key(name)], args=[limit, CONCURRENCY_TTL_S])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return await self._fallback.enter(name, limit)
        return bool(int(taken))

    async def leave(self, name: str) -> None:
        try:
            await self._leave(keys=[self._key(name)])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            await self._fallback.leave(name)
