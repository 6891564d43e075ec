"""Budgets end to end: spend is metered, a soft threshold warns, a hard stop is a 429
until the period resets, and the usage API adds up to the records."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import create_engine, text

from outpost.control_plane.db.engine import sync_url
from tests.cost.conftest import MODEL, USD_PER_HOUR, CostStack

CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hi."}],
    "max_tokens": 8,
    "temperature": 0,
}


def _post(stack: CostStack, key: str, **extra: object) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        json={**CHAT, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )


def _api(stack: CostStack, method: str, path: str, key: str, **kw: object) -> httpx.Response:
    return httpx.request(
        method,
        f"{stack.cp.url}{path}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        **kw,
    )  # type: ignore[arg-type]


def _record(stack: CostStack, request_id: str) -> dict:
    engine = create_engine(sync_url(stack.database_url))
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT * FROM request_records WHERE id = :id"), {"id": request_id}
            ).mappings()
            return dict(row.one())
    finally:
        engine.dispose()


def _wait_record(stack: CostStack, request_id: str) -> dict:
    # Records are written just after the response ends.
    import time

    for _ in range(100):
        try:
            return _record(stack, request_id)
        except Exception:  # noqa: BLE001 - not written yet
            time.sleep(0.05)
    raise AssertionError(f"no record for {request_id}")


def test_cost_of_a_request_is_rate_times_engine_share(cost_stack: CostStack) -> None:
    _, key = cost_stack.key("cost-check")
    resp = _post(cost_stack, key)
    assert resp.status_code == 200, resp.text
    rec = _wait_record(cost_stack, resp.headers["x-request-id"])
    rate = USD_PER_HOUR / 3600
    # Alone on a one-slot runner the request had the whole engine: share = its engine time.
    assert 0 < rec["engine_share_s"] <= rec["latency_ms"] / 1000
    assert rec["cost_usd"] == pytest.approx(rate * rec["engine_share_s"], rel=1e-9)
    assert rec["queue_ms"] is not None and rec["queue_ms"] < 50
    assert rec["prompt_tokens"] > 0 and rec["completion_tokens"] > 0


def test_budget_soft_warning_hard_stop_and_reset(cost_stack: CostStack) -> None:
    stack = cost_stack
    _, admin = stack.key("budgeted", "admin", admin=True)
    first = _post(stack, admin)
    assert first.status_code == 200 and "x-outpost-budget-warning" not in first.headers
    spent = _wait_record(stack, first.headers["x-request-id"])["cost_usd"]
    assert spent > 0

    usage = _api(stack, "GET", "/api/usage?period=day", admin).json()
    assert usage["total"]["requests"] == 1 and usage["total"]["cost_usd"] == pytest.approx(spent)
    assert (
        usage["by_model"][0]["model"] == MODEL
        and usage["by_runner"][0]["runner_id"] == stack.runner_id
    )

    # 90 % used, soft threshold 50 %: the next request is served with a warning...
    resp = _api(
        stack,
        "POST",
        "/api/budgets",
        admin,
        json={"period": "day", "amount_usd": spent / 0.9, "soft_threshold": 0.5},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["state"] == "soft" and resp.json()["scope"] == "tenant"
    warned = _post(stack, admin, stream=True)
    assert warned.status_code == 200
    assert "tenant day budget 90% used" in warned.headers["x-outpost-budget-warning"]

    # ...and it crosses the budget, so the one after is refused until tomorrow (UTC).
    refused = _post(stack, admin)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "budget_exceeded" and error["code"] == "budget_exceeded"
    assert "tenant's daily budget" in error["message"]
    now = stack.clock()
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    assert (
        abs(int(refused.headers["retry-after"]) - math.ceil((midnight - now).total_seconds())) <= 2
    )
    listed = _api(stack, "GET", "/api/budgets", admin).json()["data"]
    assert [b["state"] for b in listed] == ["exceeded"]

    # The next period starts with nothing spent.
    stack.clock.offset += timedelta(days=1)
    try:
        resumed = _post(stack, admin)
        assert resumed.status_code == 200, resumed.text
        assert "x-outpost-budget-warning" not in resumed.headers
    finally:
        stack.clock.offset -= timedelta(days=1)


def test_key_budget_stops_only_that_key(cost_stack: CostStack) -> None:
    stack = cost_stack
    _, admin = stack.key("two-keys", "admin", admin=True)
    capped_id, capped = stack.key("two-keys", "capped")
    created = _api(
        stack,
        "POST",
        "/api/budgets",
        admin,
        json={"api_key_id": capped_id, "period": "month", "amount_usd": 0},
    )
    assert created.status_code == 201 and created.json()["scope"] == "key"
    refused = _post(stack, capped)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert "key's monthly budget of $0.00" in refused.json()["error"]["message"]
    assert _post(stack, admin).status_code == 200  # the tenant and its other keys are not capped

    # Setting again replaces; deleting lifts the cap.
    again = _api(
        stack,
        "POST",
        "/api/budgets",
        admin,
        json={"api_key_id": capped_id, "period": "month", "amount_usd": 5},
    )
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    assert _api(stack, "DELETE", f"/api/budgets/{created.json()['id']}", admin).status_code == 204
    assert _post(stack, capped).status_code == 200


def test_budget_writes_need_admin_and_stay_in_the_tenant(cost_stack: CostStack) -> None:
    stack = cost_stack
    _, user = stack.key("plain")
    other_key_id, _ = stack.key("someone-else")
    assert _api(stack, "POST", "/api/budgets", user, json={"amount_usd": 1}).status_code == 403
    _, admin = stack.key("plain", "admin", admin=True)
    resp = _api(
        stack, "POST", "/api/budgets", admin, json={"api_key_id": other_key_id, "amount_usd": 1}
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "api_key_not_found"
    assert (
        _api(stack, "POST", "/api/budgets", admin, json={"amount_usd": 1, "extra": 1}).status_code
        == 400
    )
    assert _api(stack, "DELETE", "/api/budgets/bud_nope", admin).status_code == 404
