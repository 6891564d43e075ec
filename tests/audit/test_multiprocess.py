"""Two control-plane processes on one PostgreSQL database append to one chain."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.processes import ControlPlaneProcess
from outpost.control_plane.admin import issue_enrollment_token
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.sdk.audit import verify_export
from outpost.sdk.identity import IdentityKey
from tests.audit.conftest import run_cli

RUNNERS = 24


async def _tokens(url: str, n: int) -> list[str]:
    db = Database(url)
    try:  # a third appender: this test process itself
        return list(
            await asyncio.gather(
                *(issue_enrollment_token(db, "default", f"mp-{i}", 600) for i in range(n))
            )
        )
    finally:
        await db.dispose()


def _register(cp: ControlPlaneProcess, token: str) -> str:
    body = {"identity_public_key": IdentityKey.generate().public_b64}
    resp = httpx.post(
        f"{cp.url}/api/runners/register",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["runner_id"]


def _revoke(cp: ControlPlaneProcess, admin_key: str, runner_id: str) -> None:
    resp = httpx.post(
        f"{cp.url}/api/runners/{runner_id}/revoke",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.timeout(900)  # two servers and several CLI processes on a possibly busy machine
@pytest.mark.parametrize("fresh_database_url", ["postgres"], indirect=True)
def test_two_control_planes_append_to_one_chain(fresh_database_url: str, tmp_path: Path) -> None:
    url = fresh_database_url
    upgrade_to_head(url)
    # Each process has its own state directory, hence its own audit key; both
    # sign checkpoints often, racing each other for the tip.
    env = {"OUTPOST_AUDIT_CHECKPOINT_EVERY_N": "3", "OUTPOST_AUDIT_CHECKPOINT_EVERY_S": "0.5"}
    cps = [ControlPlaneProcess(tmp_path / f"cp{i}", url, extra_env=env) for i in (1, 2)]
    try:
        for cp in cps:
            cp.start()
        admin_key = run_cli(cps[0], "keys", "create", "mp-admin", "--admin").splitlines()[-1]
        tokens = asyncio.run(_tokens(url, RUNNERS))
        with ThreadPoolExecutor(8) as pool:
            cli = [
                pool.submit(run_cli, cps[i % 2], "keys", "create", f"mp-key-{i}") for i in range(2)
            ]
            runner_ids = list(
                pool.map(lambda it: _register(cps[it[0] % 2], it[1]), enumerate(tokens))
            )
            list(
                pool.map(
                    lambda it: _revoke(cps[it[0] % 2], admin_key, it[1]), enumerate(runner_ids[::2])
                )
            )
            for f in cli:
                f.result()

        path = tmp_path / "audit.jsonl"
        run_cli(cps[0], "audit", "export", "--out", str(path))
    finally:
        for cp in cps:
            cp.stop()

    # Pinned out of band: each process's key, read from its state directory.
    pins = [json.loads((cp.state_dir / "audit-key.json").read_text())["public_key"] for cp in cps]
    lines = path.read_text().splitlines()
    result = verify_export(lines, pins)
    assert result.ok and result.unsigned_tail == 0, result.reason
    records = [json.loads(line) for line in lines]
    events = [r["event"] for r in records if r["kind"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    by_tenant: dict[str | None, list[int]] = {}
    for e in events:  # every tenant's own numbering is contiguous too, across both processes
        by_tenant.setdefault(e["tenant"], []).append(e["tenant_seq"])
    assert all(nums == list(range(1, len(nums) + 1)) for nums in by_tenant.values()), by_tenant
    types = Counter(e["type"] for e in events)
    assert types["admin.enrollment_token.create"] == RUNNERS
    assert types["runner.enroll"] == RUNNERS and types["admin.runner.revoke"] == RUNNERS // 2
    assert types["admin.api_key.create"] == 3
    enrolled = {e["data"]["runner_id"] for e in events if e["type"] == "runner.enroll"}
    assert enrolled == set(runner_ids)
    assert len({r["seq"] for r in records if r["kind"] == "checkpoint"}) == result.checkpoints > 1
