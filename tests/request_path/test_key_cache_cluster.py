"""Two replicas on one PostgreSQL database and one Redis: a key revoked through one is refused by
the other at once, long before the key cache's TTL (300 s here) would have let it notice."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import redis

from harness.processes import ControlPlaneProcess, wait_until
from tests.conftest import _database

REDIS_URL = "redis://127.0.0.1:6379/0"


def _models(cp: ControlPlaneProcess, secret: str) -> int:
    return httpx.get(
        f"{cp.url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10
    ).status_code


def test_a_revocation_through_one_replica_reaches_the_other_at_once(tmp_path: Path) -> None:
    db = _database("postgres", tmp_path)
    url = next(db)
    prefix = f"test-{secrets.token_hex(4)}"
    env = {
        "OUTPOST_REDIS_URL": REDIS_URL,
        "OUTPOST_CLUSTER_KEY_PREFIX": prefix,
        "OUTPOST_CLUSTER_HEARTBEAT_S": "0.5",
        "OUTPOST_CLUSTER_REPLICA_TTL_S": "3",
        "OUTPOST_AUDIT_KEY_FILE": str(tmp_path / "audit-key.json"),
        "OUTPOST_AUTH_CACHE_TTL_S": "300",
    }
    a = ControlPlaneProcess(tmp_path / "a", url, extra_env=env)
    b = ControlPlaneProcess(tmp_path / "b", url, extra_env=env)
    try:
        a.start()
        b.start()
        admin = a.cli("keys", "create", "admin", "--admin").splitlines()[-1]
        victim = a.api_key("default", "victim")
        headers = {"Authorization": f"Bearer {admin}"}
        keys = httpx.get(f"{a.url}/api/keys", headers=headers, timeout=10).json()["data"]
        victim_id = next(k["id"] for k in keys if k["name"] == "victim")
        time.sleep(2.0)  # a few heartbeats: each replica knows the other is alive
        assert _models(b, victim) == 200 and _models(b, victim) == 200  # cached on B now

        resp = httpx.post(f"{a.url}/api/keys/{victim_id}/revoke", headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        t0 = time.monotonic()
        wait_until(lambda: _models(b, victim) == 401, 5, "replica B refusing the revoked key")
        assert time.monotonic() - t0 < 5
        assert _models(a, victim) == 401
    finally:
        a.stop()
        b.stop()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            if found := list(client.scan_iter(match=f"{prefix}:*", count=500)):
                client.delete(*found)
        finally:
            client.close()
        db.close()
