"""The verified-key cache: hits skip the database, changes through this process apply at once,
expired keys are refused whatever the cache holds, and changes made elsewhere within the TTL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx

from harness.processes import run_db
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.services.auth_cache import CachedKey, KeyCache
from outpost.control_plane.store.keys import create_api_key, get_api_key, revoke_api_key
from outpost.control_plane.store.tenants import get_or_create_tenant
from tests.request_path.conftest import MODEL, PathStack, StatementCounter

# --- the cache alone, with clocks the tests move ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.mono = 0.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall


def _key(
    key_id: str = "key_1", tenant: str = "ten_1", expires_at: datetime | None = None
) -> CachedKey:
    return CachedKey(
        tenant_id=tenant, api_key_id=key_id, scopes=frozenset({"inference"}), expires_at=expires_at
    )


def _cache(clock: Clock, **kw) -> KeyCache:
    return KeyCache(clock=clock.monotonic, wall_clock=clock.now, **kw)


def test_entry_serves_its_own_secret_only_and_a_wrong_one_leaves_it() -> None:
    clock = Clock()
    cache = _cache(clock)
    cache.put("abc", "s3cret", _key(), generation=cache.generation)
    assert cache.get("abc", "s3cret") == _key()
    assert cache.get("abc", "wrong") is None
    assert cache.get("abc", "s3cret") == _key(), "a wrong secret must not evict the entry"
    assert all("s3cret" not in repr(v) for v in vars(cache).values()), "the secret is never stored"


def test_entries_expire_after_the_ttl_and_at_the_keys_own_expiry() -> None:
    clock = Clock()
    cache = _cache(clock, ttl_s=5)
    cache.put("a", "x", _key("k_a"), generation=cache.generation)
    cache.put(
        "b",
        "y",
        _key("k_b", expires_at=clock.wall + timedelta(seconds=2)),
        generation=cache.generation,
    )
    clock.mono += 2
    clock.wall += timedelta(seconds=2)
    assert cache.get("a", "x") is not None
    assert cache.get("b", "y") is None, "the key expired: refused though its entry is fresh"
    clock.mono += 3
    assert cache.get("a", "x") is None, "older than the TTL: read the database again"


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = _cache(Clock(), max_entries=2)
    for name in "abc":
        cache.put(name, name, _key(f"k_{name}"), generation=cache.generation)
        cache.get("a", "a")  # keep "a" recently used
    assert len(cache) == 2 and cache.get("a", "a") is not None and cache.get("b", "b") is None


def test_invalidation_by_key_and_tenant_and_a_read_that_raced_it() -> None:
    cache = _cache(Clock())
    cache.put("a", "x", _key("k_a", "t1"), generation=cache.generation)
    cache.put("b", "y", _key("k_b", "t2"), generation=cache.generation)
    cache.invalidate_keys(["k_a"])
    cache.invalidate_tenants(["t2"])
    assert cache.get("a", "x") is None and cache.get("b", "y") is None
    # A database read that began before an invalidation may hold the old row: not cached.
    before = cache.generation
    cache.invalidate_keys(["k_other"])
    cache.put("a", "x", _key("k_a"), generation=before)
    assert cache.get("a", "x") is None


# --- a real control plane ------------------------------------------------------------------------


def chat(stack: PathStack, secret: str) -> httpx.Response:
    return httpx.post(
        f"{stack.cp.url}/v1/chat/completions",
        headers=stack.headers(secret),
        timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )


def test_a_cache_hit_sends_no_query_for_the_key_or_its_policy(path_stack: PathStack) -> None:
    _, secret = path_stack.key("cache-hit")
    counter = StatementCounter(path_stack.cp.state.db)
    try:
        assert chat(path_stack, secret).status_code == 200
        assert counter.count("FROM api_keys") >= 2, "the first request reads the key and its policy"
        counter.statements.clear()
        for _ in range(5):
            assert chat(path_stack, secret).status_code == 200
        assert counter.count("api_keys") == 0, [s for s in counter.statements if "api_keys" in s]
        assert counter.count("FROM tenants") == 0
    finally:
        counter.close()


def test_revocation_through_this_process_applies_at_once(path_stack: PathStack) -> None:
    key_id, secret = path_stack.key("to-revoke")
    _, admin = path_stack.key("revoker", admin=True)
    assert chat(path_stack, secret).status_code == 200
    assert chat(path_stack, secret).status_code == 200  # served from the cache now
    resp = httpx.post(
        f"{path_stack.cp.url}/api/keys/{key_id}/revoke",
        headers=path_stack.headers(admin),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    refused = chat(path_stack, secret)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key", (
        refused.text
    )


def test_an_expired_key_is_refused_even_while_cached(path_stack: PathStack) -> None:
    expires = utcnow() + timedelta(seconds=3)

    async def short_lived(db: Database) -> str:
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "paths")
            _, secret = await create_api_key(session, tenant.id, "short", expires_at=expires)
            await session.commit()
        return secret

    secret = run_db(path_stack.database_url, short_lived)
    counter = StatementCounter(path_stack.cp.state.db)
    try:
        assert chat(path_stack, secret).status_code == 200
        counter.statements.clear()
        assert chat(path_stack, secret).status_code == 200
        assert counter.count("api_keys") == 0, "cached (the TTL is 300 s here)"
    finally:
        counter.close()
    time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.2)
    assert chat(path_stack, secret).status_code == 401


def test_a_revocation_elsewhere_is_seen_within_the_ttl(path_stack: PathStack) -> None:
    """Another replica without Redis, or the CLI: the documented bound is the TTL."""
    key_id, secret = path_stack.key("revoked-elsewhere")
    assert chat(path_stack, secret).status_code == 200

    async def revoke(db: Database) -> None:
        async with db.session() as session:
            tenant = await get_or_create_tenant(session, "paths")
            key = await get_api_key(session, key_id, tenant.id)
            assert key is not None
            await revoke_api_key(session, key)
            await session.commit()

    run_db(path_stack.database_url, revoke)
    cache = path_stack.cp.state.key_cache
    ttl = cache.ttl_s
    cache.ttl_s = 1.0
    try:
        time.sleep(1.1)
        assert chat(path_stack, secret).status_code == 401
    finally:
        cache.ttl_s = ttl
