"""Two replicas (one PostgreSQL, one Redis): grants, revocations and an owner's change to a runner
made through one replica hold on the other at once, not after the key cache's TTL (300 s here).
Issue 19."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import redis

from harness.processes import ControlPlaneProcess, wait_until
from tests.conftest import _database
from tests.security.test_pools_trust import ALIAS, ScriptedRunner

REDIS_URL = "redis://127.0.0.1:6379/0"


def _chat(cp: ControlPlaneProcess, key: str) -> int:
    return httpx.post(
        f"{cp.url}/v1/chat/completions",
        timeout=30,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": ALIAS, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ).status_code


def test_grant_revoke_and_pool_changes_reach_the_other_replica_at_once(tmp_path: Path) -> None:
    db = _database("postgres", tmp_path)
    url = next(db)
    prefix = f"test-{secrets.token_hex(4)}"
    env = {
        "OUTPOST_REDIS_URL": REDIS_URL,
        "OUTPOST_CLUSTER_KEY_PREFIX": prefix,
        "OUTPOST_CLUSTER_HEARTBEAT_S": "0.5",
        "OUTPOST_CLUSTER_REPLICA_TTL_S": "3",
        "OUTPOST_RUNNER_WAIT_S": "1",
        "OUTPOST_AUDIT_KEY_FILE": str(tmp_path / "audit-key.json"),
        "OUTPOST_AUTH_CACHE_TTL_S": "300",
    }
    a = ControlPlaneProcess(tmp_path / "a", url, extra_env=env, shared_pool=False)
    b = ControlPlaneProcess(tmp_path / "b", url, extra_env=env, shared_pool=False)
    runner = None
    try:
        a.start()
        b.start()
        owner = a.cli("keys", "create", "admin", "--tenant", "owner", "--admin").splitlines()[-1]
        guest = a.cli("keys", "create", "guest", "--tenant", "guest").splitlines()[-1]
        runner = ScriptedRunner(b, owner, "held-by-b")  # its tunnel is on replica B
        runner.connect()
        wait_until(lambda: _chat(a, owner) == 200, 10, "replica A routing to the runner B holds")
        assert (
            _chat(a, guest) == 404 and _chat(b, guest) == 404
        )  # the guest's key is cached on both now

        headers = {"Authorization": f"Bearer {owner}"}
        grant = httpx.post(
            f"{b.url}/api/pools/default/grants",
            json={"tenant": "guest"},
            headers=headers,
            timeout=10,
        )
        assert grant.status_code == 201, grant.text
        wait_until(lambda: _chat(a, guest) == 200, 5, "replica A seeing the grant made on B")

        # The owner moves the runner (held by B) to a pool not granted, through A.
        pool = httpx.post(
            f"{a.url}/api/pools", json={"name": "private"}, headers=headers, timeout=10
        ).json()
        moved = httpx.patch(
            f"{a.url}/api/runners/{runner.runner_id}",
            json={"pool": pool["id"]},
            headers=headers,
            timeout=10,
        )
        assert moved.status_code == 200, moved.text
        wait_until(
            lambda: _chat(a, guest) == 404 and _chat(b, guest) == 404,
            5,
            "both replicas seeing the runner's new pool",
        )
        assert _chat(a, owner) == 200

        back = httpx.patch(
            f"{a.url}/api/runners/{runner.runner_id}",
            json={"pool": "default"},
            headers=headers,
            timeout=10,
        )
        assert back.status_code == 200
        wait_until(lambda: _chat(b, guest) == 200, 5, "the runner back in the granted pool")
        revoked = httpx.post(
            f"{a.url}/api/pools/grants/{grant.json()['id']}/revoke", headers=headers, timeout=10
        )
        assert revoked.status_code == 200, revoked.text
        wait_until(lambda: _chat(b, guest) == 404, 5, "replica B seeing the revocation made on A")
        assert runner.captured  # the owner's and the guest's requests while granted reached it
    finally:
        if runner is not None:
            runner.close()
        a.stop()
        b.stop()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            if found := list(client.scan_iter(match=f"{prefix}:*", count=500)):
                client.delete(*found)
        finally:
            client.close()
        db.close()
