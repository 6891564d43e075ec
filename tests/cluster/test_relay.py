"""Requests relayed through Redis: replica A receives, the runner's tunnel ends on replica B.

Real processes throughout: two control planes on one PostgreSQL database and
one Redis, a runner with the embedded model connected to B only.
"""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import openai
from sqlalchemy import create_engine, text

from harness.processes import wait_until
from outpost.control_plane.db.engine import sync_url
from tests.cluster.conftest import MODEL, Cluster, OnB, engine_processing, sse_events


def _runner_row(cluster: Cluster, runner_id: str) -> dict:
    rows = httpx.get(f"{cluster.b.url}/api/runners", headers=cluster.headers, timeout=5).json()[
        "data"
    ]
    return next(r for r in rows if r["id"] == runner_id)


def test_streaming_request_to_a_is_served_by_runner_on_b(on_b: OnB) -> None:
    cluster, runner_id = on_b.cluster, on_b.runner_id

    # The OpenAI client against replica A, which holds no tunnel.
    client = openai.OpenAI(base_url=f"{cluster.a.url}/v1", api_key=cluster.admin_key, max_retries=0)
    assert MODEL in [m.id for m in client.models.list()]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to twenty."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-outpost-runner"] == runner_id
    pieces, arrivals, usage = [], [], None
    for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            arrivals.append(time.monotonic())
        if chunk.usage:
            usage = chunk.usage
    # Streaming is preserved across the relay: many chunks, arriving over time, not in one burst.
    assert len(pieces) > 10
    assert arrivals[-1] - arrivals[0] > 0.2
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1

    # A non-streaming request through A, and one through B (local), both answer.
    for cp in (cluster.a, cluster.b):
        resp = cluster.chat(cp, max_tokens=4)
        assert resp.status_code == 200, resp.text
        assert (
            resp.headers["x-outpost-runner"] == runner_id
            and resp.json()["usage"]["completion_tokens"] > 0
        )

    # A wrote the record of the request it received, with usage, priced by the runner's rate.
    request_id = raw.headers["x-request-id"]
    engine = create_engine(sync_url(cluster.database_url))
    try:

        def fetch() -> dict | None:
            with engine.connect() as conn:
                found = (
                    conn.execute(
                        text("SELECT * FROM request_records WHERE id = :id"), {"id": request_id}
                    )
                    .mappings()
                    .first()
                )
                return dict(found) if found else None

        wait_until(lambda: fetch() is not None, 10, "request record")
        row = fetch()
    finally:
        engine.dispose()
    assert row is not None and row["runner_id"] == runner_id and row["status"] == "ok"
    assert row["completion_tokens"] == usage.completion_tokens


def test_client_disconnect_at_a_stops_generation_on_the_runner(on_b: OnB) -> None:
    cluster, runner, runner_id = on_b.cluster, on_b.runner, on_b.runner_id
    wait_until(lambda: engine_processing(runner) == 0, 10, "an idle engine")
    time.sleep(2.5)  # the runner reports its served count every 2 s: let earlier tests' settle
    served_before = _runner_row(cluster, runner_id)["served_total"]

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    seen = 0
    with httpx.stream(
        "POST",
        f"{cluster.a.url}/v1/chat/completions",
        json=body,
        headers=cluster.headers,
        timeout=60,
    ) as resp:
        assert resp.status_code == 200 and resp.headers["x-outpost-runner"] == runner_id
        for _ in sse_events(resp):
            seen += 1
            if seen == 5:
                # Generating now; 1,500 tokens would take far longer than this test waits.
                assert engine_processing(runner) == 1
                break
    # Leaving the block closes the connection: A resets through Redis, B resets the tunnel
    # stream, the runner aborts the engine request.
    t0 = time.monotonic()
    wait_until(lambda: engine_processing(runner) == 0, 10, "the engine to stop generating")
    assert time.monotonic() - t0 < 10
    # The runner did not count the stream as answered, and B holds no relay any more.
    time.sleep(2.5)  # one status interval: a stream that ran to the end would be counted by now
    state = _runner_row(cluster, runner_id)
    assert state["served_total"] == served_before and state["in_flight"] == 0
    # The runner still serves, through either replica.
    assert cluster.chat(cluster.a).status_code == 200


def test_rate_limit_is_shared_by_the_replicas(on_b: OnB) -> None:
    cluster = on_b.cluster
    key = cluster.a.cli("keys", "create", "limited", "--rate-limit-rpm", "4").splitlines()[-1]
    codes = [
        cluster.chat(cp, max_tokens=1, key=key).status_code
        for cp in (cluster.a, cluster.b, cluster.a, cluster.b, cluster.a, cluster.b)
    ]
    # One bucket of 4 for the key, whichever replica a request reaches (per replica it would be 6 x
    # 200).
    assert codes[:4] == [200, 200, 200, 200]
    assert codes[4:] == [429, 429]


def test_audit_chain_stays_one_chain_across_replicas(on_b: OnB) -> None:
    cluster = on_b.cluster
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: cluster.chat(cluster.a if i % 2 else cluster.b, max_tokens=2), range(16)
            )
        )
    assert [r.status_code for r in results] == [200] * 16
    time.sleep(1.0)  # request records (and their audit events) are written just after the response
    export = cluster.tmp / "audit.jsonl"
    cluster.a.cli("audit", "export", "--out", str(export))
    out = cluster.b.cli("audit", "verify", str(export), "--public-key", str(cluster.audit_key_file))
    assert out.startswith("OK:"), out
    records = [json.loads(line) for line in export.read_text().splitlines()]
    inferences = [
        r
        for r in records
        if r.get("type") == "inference" or r.get("event", {}).get("type") == "inference"
    ]
    assert len(inferences) >= 16, records[-3:]


def test_budget_spent_through_either_replica_stops_both(on_b: OnB) -> None:
    """Spending is one sum in PostgreSQL: what a tenant spent through A exhausts its budget on B
    too."""
    cluster = on_b.cluster
    tenant = "budget-x"
    key = cluster.a.cli("keys", "create", "budgeted", "--tenant", tenant, "--admin").splitlines()[
        -1
    ]
    headers = {"Authorization": f"Bearer {key}"}
    assert cluster.chat(cluster.a, max_tokens=4, key=key).status_code == 200
    assert cluster.chat(cluster.b, max_tokens=4, key=key).status_code == 200

    def usage(cp) -> dict:
        return httpx.get(f"{cp.url}/api/usage?period=day", headers=headers, timeout=10).json()[
            "total"
        ]

    wait_until(
        lambda: usage(cluster.a)["requests"] == 2 and usage(cluster.b)["requests"] == 2,
        30,
        "both requests' records, seen by both replicas",
    )
    spent = usage(cluster.b)["cost_usd"]
    assert spent > 0 and usage(cluster.a)["cost_usd"] == spent

    # A budget of exactly what was spent is exhausted (spent >= amount) for both replicas.
    made = json.loads(
        cluster.b.cli(
            "budgets", "set", "--tenant", tenant, "--period", "day", "--amount", repr(spent)
        )
    )
    try:

        def refused(cp) -> bool:
            resp = cluster.chat(cp, max_tokens=1, key=key)
            assert resp.status_code in (200, 429), resp.text
            return resp.status_code == 429 and resp.json()["error"]["code"] == "budget_exceeded"

        # Each replica caches budget rows for budget_cache_s (1 s); then both refuse.
        wait_until(lambda: refused(cluster.a), 15, "replica A refusing the exhausted budget")
        wait_until(lambda: refused(cluster.b), 15, "replica B refusing the exhausted budget")
        for cp in (cluster.a, cluster.b):
            rows = httpx.get(f"{cp.url}/api/budgets", headers=headers, timeout=10).json()["data"]
            row = next(r for r in rows if r["id"] == made["id"])
            assert row["state"] == "exceeded" and row["spent_usd"] >= spent
    finally:
        cluster.b.cli("budgets", "delete", made["id"], "--tenant", tenant)
