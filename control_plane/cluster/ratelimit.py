"""Per-key rate limits shared by every replica: the token bucket of
``services/ratelimit.py``, kept in Redis and updated by one Lua script.

Same interface (:class:`~control_plane.services.ratelimit.RateLimiter`),
same arithmetic: a key allowed ``rpm`` requests a minute owns a bucket of
``rpm`` tokens refilled at ``rpm / 60`` a second; a request takes one. The
script reads, refills, takes and writes in one atomic step, so two replicas
can never both spend a key's last token. It reads Redis's own clock
(``TIME``), so replicas with skewed clocks still agree. A bucket expires
once it would be full again, so idle keys cost nothing.

If Redis cannot be reached, the limiter falls back to an in-process bucket
and logs it: limits then hold per replica (at most N x rpm across N
replicas) rather than failing every request while Redis is down.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from outpost.control_plane.cluster.bus import Keys
from outpost.control_plane.services.ratelimit import RateDecision, TokenBucketLimiter

__all__ = ["RedisRateLimiter"]

log = logging.getLogger("outpost.cluster")

# KEYS[1] bucket; ARGV[1] rpm. Returns {allowed (0/1), tokens left (string: Lua numbers
# become integers on the way out)}.
_TOKEN_BUCKET = """
local rpm = tonumber(ARGV[1])
local rate = rpm / 60.0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = rpm
  at = now
end
tokens = math.min(rpm, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((rpm - tokens) / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class RedisRateLimiter:
    def __init__(
        self, redis: Redis, keys: Keys, fallback: TokenBucketLimiter | None = None
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_TOKEN_BUCKET)
        self._fallback = fallback or TokenBucketLimiter()
        self._degraded = False

    async def acquire(self, key: str, rpm: int) -> RateDecision:
        if rpm <= 0:
            return RateDecision(False, rpm, 0, 60.0, 60.0)
        try:
            allowed, left = await self._script(keys=[self._keys.rate(key)], args=[rpm])
        except (RedisError, OSError) as exc:
            if not self._degraded:
                log.warning("rate limits fall back to this replica alone: Redis failed (%s)", exc)
                self._degraded = True
            return self._fallback.take(key, rpm)
        if self._degraded:
            log.info("rate limits are shared through Redis again")
            self._degraded = False
        tokens = float(left.decode() if isinstance(left, bytes) else left)
        rate = rpm / 60.0
        ok = bool(int(allowed))
        retry = 0.0 if ok else (1.0 - tokens) / rate
        return RateDecision(ok, rpm, int(tokens), retry, (rpm - tokens) / rate)
