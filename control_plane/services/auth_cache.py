"""Verified API keys, cached in process for a few seconds (docs/performance.md).

Every inference request used to read its key and the key's policy from the
database: two sessions and two SELECTs before anything was routed. A key is
now looked up by its public prefix in a small LRU map; the entry holds an
HMAC of the secret under a per-process random key (never the secret, and not
the hash the database stores) and is accepted only if the presented secret's
HMAC matches in constant time. A wrong secret for a cached prefix falls
through to the database and leaves the entry alone.

Staleness is bounded:

* in this process, a committed change to an API key or a tenant (revoke,
  limits, routing, residency, weight) drops the affected entries at once
  (``store.changes``) — the next request reads the database;
* an entry is never used past its key's ``expires_at``, whatever the TTL;
* with Redis (several replicas), a replica that commits such a change tells
  the others (``cluster``: a ``keys`` message), which drop the entries as
  soon as they read it — typically within milliseconds;
* changes nobody announces (the ``control-plane`` CLI, SQL, a replica that
  could not reach Redis) are seen after at most ``ttl_s``, the entry's age
  limit. That is the documented bound for revocation across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.security import parse_secret
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.changes import ALL_TENANTS, KEY_CACHE_INFO
from outpost.control_plane.store.keys import authenticate_api_key
from outpost.control_plane.store.policies import KeyPolicy, get_key_policy

if TYPE_CHECKING:
    from outpost.control_plane.cluster import Cluster

__all__ = ["CachedKey", "KeyCache", "authenticate"]

log = logging.getLogger("outpost.auth")


@dataclass(frozen=True)
class CachedKey:
    """What a request needs of its verified key: who, what it may do, until when, and its policy."""

    tenant_id: str
    api_key_id: str
    scopes: frozenset[str]
    expires_at: datetime | None
    policy: KeyPolicy = field(default_factory=KeyPolicy)


@dataclass
class _Entry:
    key: CachedKey
    digest: bytes
    cached_at: float  # monotonic


class KeyCache:
    """An LRU map from key prefix to a verified key, each entry valid for ``ttl_s``."""

    def __init__(
        self,
        *,
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock, self._wall_clock = clock, wall_clock
        self._pepper = secrets.token_bytes(32)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # prefix -> entry, oldest use first
        self._prefix_of: dict[str, str] = {}  # api_key_id -> prefix
        # Bumped by every invalidation: a database read that began before one
        # may hold the old row and must not be cached (see ``put``).
        self.generation = 0
        self.hits = self.misses = 0
        # Tells other replicas about changes committed here (``share_through``).
        self._publish: Callable[[set[str], set[str]], Awaitable[None]] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._loading: dict[
            tuple[str, bytes], asyncio.Task[CachedKey | None]
        ] = {}  # reads in flight

    @classmethod
    def for_database(cls, db: Database, settings: Settings) -> KeyCache:
        """A cache that every commit through ``db``'s sessions keeps current (``store.changes``)."""
        cache = cls(ttl_s=settings.auth_cache_ttl_s, max_entries=settings.auth_cache_size)
        db.sessions.configure(info=cache.session_info())
        return cache

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    def get(self, prefix: str, secret: str) -> CachedKey | None:
        """The cached key for ``prefix`` if ``secret`` is its secret, fresh and unexpired; else
        ``None``."""
        entry = self._entries.get(prefix)
        if entry is None:
            self.misses += 1
            return None
        if not hmac.compare_digest(entry.digest, self._digest(secret)):
            self.misses += 1  # a wrong secret: the database decides, the entry stays
            return None
        if self._clock() - entry.cached_at >= self.ttl_s or self._expired(entry.key):
            self._drop(prefix)
            self.misses += 1
            return None
        self._entries.move_to_end(prefix)
        self.hits += 1
        return entry.key

    async def load(
        self, prefix: str, secret: str, read: Callable[[], Awaitable[CachedKey | None]]
    ) -> CachedKey | None:
        """Read a key that missed, once for all the requests presenting it at the same moment.

        When an entry expires under load, every request of that key misses at
        once; without this each would take a pooled connection for the same
        two SELECTs (the scale benchmark ran the pool dry that way).
        """
        flight = (prefix, self._digest(secret))
        task = self._loading.get(flight)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(prefix, secret, read, flight))
            self._loading[flight] = task
        # Shielded: one waiter's cancellation (its client left) must not fail the others.
        return await asyncio.shield(task)

    async def _load(
        self,
        prefix: str,
        secret: str,
        read: Callable[[], Awaitable[CachedKey | None]],
        flight: tuple[str, bytes],
    ) -> CachedKey | None:
        generation = self.generation
        try:
            key = await read()
        finally:
            del self._loading[flight]
        if key is not None:
            self.put(prefix, secret, key, generation=generation)
        return key

    def put(self, prefix: str, secret: str, key: CachedKey, *, generation: int) -> None:
        """Cache ``key``, read from the database after ``generation`` was taken."""
        if not self.enabled or generation != self.generation:
            return
        self._drop(prefix)
        self._entries[prefix] = _Entry(key, self._digest(secret), self._clock())
        self._prefix_of[key.api_key_id] = prefix
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def invalidate_keys(self, key_ids: Iterable[str]) -> None:
        self.generation += 1
        for key_id in key_ids:
            if (prefix := self._prefix_of.get(key_id)) is not None:
                self._drop(prefix)

    def invalidate_tenants(self, tenant_ids: Iterable[str]) -> None:
        self.generation += 1
        tenants = set(tenant_ids)
        if ALL_TENANTS in tenants:  # a pool granted to (or revoked from) every tenant
            self._entries.clear()
            self._prefix_of.clear()
            return
        for prefix in [p for p, e in self._entries.items() if e.key.tenant_id in tenants]:
            self._drop(prefix)

    def changed_here(self, key_ids: set[str], tenant_ids: set[str]) -> None:
        """A commit in this process changed these keys or tenants (``store.changes``)."""
        self.invalidate_keys(key_ids)
        self.invalidate_tenants(tenant_ids)
        if self._publish is not None:
            task = asyncio.get_running_loop().create_task(
                self._tell_others(set(key_ids), set(tenant_ids))
            )
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    def changed_elsewhere(self, key_ids: list[str], tenant_ids: list[str]) -> None:
        """Another replica committed a change to these keys or tenants."""
        self.invalidate_keys(key_ids)
        self.invalidate_tenants(tenant_ids)

    def share_through(self, cluster: Cluster) -> None:
        """Tell the other replicas about changes committed here, and listen to theirs."""
        self._publish = cluster.keys_changed_everywhere
        cluster.key_listeners.append(self.changed_elsewhere)

    async def _tell_others(self, key_ids: set[str], tenant_ids: set[str]) -> None:
        assert self._publish is not None
        try:
            await self._publish(key_ids, tenant_ids)
        except Exception as exc:  # noqa: BLE001 - the TTL still bounds staleness elsewhere
            log.warning(
                "could not tell the other replicas that API keys changed (%s); they will notice "
                "within %gs",
                exc,
                self.ttl_s,
            )

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._prefix_of.clear()

    def expired(self, key: CachedKey) -> bool:
        return self._expired(key)

    def _expired(self, key: CachedKey) -> bool:
        exp = key.expires_at
        if exp is None:
            return False
        if exp.tzinfo is None:  # SQLite returns naive datetimes
            exp = exp.replace(tzinfo=self._wall_clock().tzinfo)
        return exp <= self._wall_clock()

    def _drop(self, prefix: str) -> None:
        entry = self._entries.pop(prefix, None)
        if entry is not None and self._prefix_of.get(entry.key.api_key_id) == prefix:
            del self._prefix_of[entry.key.api_key_id]

    def session_info(self) -> dict[str, Any]:
        """``info`` for a session factory whose commits must invalidate this cache."""
        return {KEY_CACHE_INFO: self}


async def authenticate(db: Database, cache: KeyCache, token: str) -> CachedKey | None:
    """The verified, unrevoked, unexpired key ``token`` names, from the cache or the database."""
    parsed = parse_secret(token, "sk")
    if parsed is None:
        return None
    if (hit := cache.get(parsed.prefix, parsed.secret)) is not None:
        return hit
    return await cache.load(parsed.prefix, parsed.secret, lambda: _read_key(db, token))


async def _read_key(db: Database, token: str) -> CachedKey | None:
    # A short session of its own: a streaming response must not pin a pooled
    # connection for its whole lifetime.
    async with db.session() as session:
        row = await authenticate_api_key(session, token)
        if row is None:
            return None
        policy = await get_key_policy(session, row.id)
    return CachedKey(
        tenant_id=row.tenant_id,
        api_key_id=row.id,
        scopes=frozenset(row.scopes.split(",")),
        expires_at=row.expires_at,
        policy=policy or KeyPolicy(),
    )
