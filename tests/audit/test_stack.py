"""The audit log of a real control plane with a real runner and llama.cpp, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from outpost.control_plane.db.engine import sync_url
from outpost.sdk.audit import verify_export
from tests.audit.conftest import run_cli
from tests.conftest import Stack

MODEL = "smollm2-135m-instruct"


def audit_rows(stack: Stack, where: str = "1=1", **params: object) -> list[dict]:
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    text(f"SELECT * FROM audit_events WHERE {where} ORDER BY seq"), params
                ).mappings()
            ]
    finally:
        engine.dispose()


def inference_ids(stack: Stack) -> Counter[str]:
    ids: Counter[str] = Counter()
    for row in audit_rows(stack, "type = 'inference'"):
        data = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"])
        ids[data["request_id"]] += 1
    return ids


def wait_audited(stack: Stack, request_ids: set[str], timeout: float = 60) -> Counter[str]:
    # Records are written after the response is sent; give them a moment.
    deadline = time.monotonic() + timeout
    while True:
        seen = inference_ids(stack)
        if request_ids <= set(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def public_key(stack: Stack) -> str:
    """Pinned out of band: read from the control plane's state directory on its host."""
    return json.loads((stack.cp.state_dir / "audit-key.json").read_text())["public_key"]


def export_and_verify(stack: Stack, path: Path, *, cli_verify: bool = False) -> list[str]:
    run_cli(stack.cp, "audit", "export", "--out", str(path))
    if cli_verify:
        out = run_cli(stack.cp, "audit", "verify", str(path), "--public-key", public_key(stack))
        assert out.startswith("OK:"), out
    lines = path.read_text(encoding="utf-8").splitlines()
    result = verify_export(lines, [public_key(stack)])
    assert result.ok and result.unsigned_tail == 0, result.reason
    return lines


async def _chat_many(stack: Stack, n: int, concurrency: int) -> list[str]:
    client = openai.AsyncOpenAI(
        base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=120
    )
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with gate:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Say {i}."}],
                max_tokens=1,
                temperature=0,
            )
            return raw.headers["x-request-id"]

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


@pytest.mark.timeout(900)  # 200 requests on a one-thread CPU engine, plus CLI processes
def test_concurrent_inference_and_admin_actions_form_one_chain(
    stack: Stack, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(4) as pool:
        admin = [pool.submit(run_cli, stack.cp, "keys", "create", f"audit-{i}") for i in range(6)]
        request_ids = asyncio.run(_chat_many(stack, 200, 20))
        key_ids = [f.result() for f in admin]
    assert len(set(request_ids)) == 200 and len(key_ids) == 6

    seen = wait_audited(stack, set(request_ids))
    assert all(seen[r] == 1 for r in request_ids), "every request id is audited exactly once"

    lines = export_and_verify(stack, tmp_path / "audit.jsonl", cli_verify=True)
    events = [json.loads(line)["event"] for line in lines if json.loads(line)["kind"] == "event"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "one unbroken chain"
    exported = Counter(e["data"]["request_id"] for e in events if e["type"] == "inference")
    assert all(exported[r] == 1 for r in request_ids)
    assert (
        sum(
            e["type"] == "admin.api_key.create"
            and e["data"]["details"]["name"].startswith("audit-")
            for e in events
        )
        == 6
    )
    sample = next(
        e for e in events if e["type"] == "inference" and e["data"]["request_id"] == request_ids[0]
    )
    assert sample["data"]["status"] == "ok" and sample["data"]["runner_id"] == stack.runner_id
    assert sample["data"]["completion_tokens"] == 1 and sample["data"]["prompt_tokens"] > 0
    assert sample["data"]["e2e"] is False and isinstance(sample["data"]["latency_ms"], int)


def test_runner_connection_is_audited(stack: Stack) -> None:
    rows = audit_rows(stack, "type = 'runner.connect'")
    assert any(
        (r["data"] if isinstance(r["data"], dict) else json.loads(r["data"]))["runner_id"]
        == stack.runner_id
        for r in rows
    )
    assert audit_rows(stack, "type = 'runner.enroll'")


def test_prompt_canary_never_reaches_the_audit_log(stack: Stack, tmp_path: Path) -> None:
    canary = "CANARY-audit-5e1d0b-never-logged"
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "system", "content": canary}, {"role": "user", "content": canary}],
        max_tokens=2,
    )
    request_id = raw.headers["x-request-id"]
    wait_audited(stack, {request_id})
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            dump = "\n".join(
                repr(tuple(r))
                for table in ("audit_events", "audit_checkpoints", "audit_keys")
                for r in conn.execute(text(f"SELECT * FROM {table}"))
            )
    finally:
        engine.dispose()
    assert request_id in dump and canary not in dump
    lines = export_and_verify(stack, tmp_path / "canary.jsonl")
    assert request_id in "\n".join(lines) and canary not in "\n".join(lines)


@pytest.mark.timeout(600)
def test_a_tenant_reads_only_its_own_audit_events(stack: Stack, tmp_path: Path) -> None:
    key_a = run_cli(
        stack.cp, "keys", "create", "a-admin", "--tenant", "audit-a", "--admin"
    ).splitlines()[-1]
    key_b = run_cli(
        stack.cp, "keys", "create", "b-admin", "--tenant", "audit-b", "--admin"
    ).splitlines()[-1]
    ids = {}
    for name, key in (("a", key_a), ("b", key_b)):
        client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        ids[name] = raw.headers["x-request-id"]
    wait_audited(stack, set(ids.values()))

    def get(key: str, path: str = "/api/audit", **params: object) -> httpx.Response:
        return httpx.get(
            f"{stack.cp.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    page = get(key_a, limit=1000).json()
    tenants = {e["tenant_id"] for e in page["data"]}
    assert len(tenants) == 1
    body = json.dumps(page)
    assert ids["a"] in body and ids["b"] not in body
    own = [e for e in page["data"] if e["type"] == "inference"]
    assert [e["data"]["request_id"] for e in own] == [ids["a"]]

    # No way to name another tenant; filters only narrow the caller's own events.
    assert get(key_a, tenant_id="anything").status_code == 400
    b_key_id = get(key_b, type="inference").json()["data"][0]["data"]["api_key_id"]
    assert get(key_a, actor=f"key:{b_key_id}").json()["data"] == []
    assert get(key_a, type="admin").json()["data"][0]["type"].startswith("admin.")
    assert get(stack.api_key).status_code == 403  # an inference-only key has no admin scope

    # Cursor pagination walks the same events one at a time.
    walked, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        resp = get(key_a, **params).json()
        walked += [e["seq"] for e in resp["data"]]
        if not (cursor := resp["next_cursor"]):
            break
    assert walked == [e["seq"] for e in page["data"]]
    # A cursor past any seq this API hands out is a 400, not an integer overflow in the database.
    for bad in ("19938172189300333482", str(2**53), "9" * 16):
        resp = get(key_a, cursor=bad)
        assert resp.status_code == 400 and resp.json()["error"]["param"], resp.text

    # The tenant's own export verifies against the pinned key, without B's events.
    run_cli(stack.cp, "audit", "checkpoint")
    export = get(key_a, "/api/audit/export").text.splitlines()
    result = verify_export(export, [public_key(stack)])
    assert result.ok and result.redacted > 0, result.reason
    assert ids["a"] in "\n".join(export) and ids["b"] not in "\n".join(export)
    keys = get(key_b, "/api/audit/keys").json()["data"]
    assert public_key(stack) in {k["public_key"] for k in keys}
