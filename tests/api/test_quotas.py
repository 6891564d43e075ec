"""Token quotas and requests in flight across two real control-plane replicas (one PostgreSQL,
one Redis) and a real runner with the embedded model.

What one replica counts, the other sees: a key that spent its tokens on A is refused on B; the
reservation made at admission is settled with the usage the runner reported; a key's slot held by
a stream on A refuses a request on B until it ends. Refusals are 429 with ``Retry-After`` and the
OpenAI ``x-ratelimit-*`` headers; a request larger than a whole quota is refused without one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from harness.processes import ControlPlaneProcess, wait_until
from tests.cluster.conftest import MODEL, Cluster, _cluster


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _cluster(tmp_path_factory.mktemp("quotas")) as c:
        runner = c.runner(c.a.url)
        c.wait_seen_by_both(runner.wait_connected(c.admin_key))
        yield c


def _key(c: Cluster, name: str, tenant: str = "default") -> tuple[str, str]:
    secret = c.a.cli("keys", "create", name, "--tenant", tenant).splitlines()[-1]
    rows = [
        json.loads(line)
        for line in c.a.cli("keys", "list", "--tenant", tenant, "--json").splitlines()
    ]
    key_id = next(r["id"] for r in rows if r["name"] == name)
    return key_id, secret


def _chat(
    cp: ControlPlaneProcess, key: str, max_tokens: int = 8, **extra: object
) -> httpx.Response:
    return httpx.post(
        f"{cp.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            **extra,
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def _total(response: httpx.Response) -> int:
    usage = response.json()["usage"]
    return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])


def test_tokens_spent_on_one_replica_are_refused_on_the_other(two: Cluster) -> None:
    key_id, key = _key(two, "day-quota")
    # A day window: no boundary passes during the test (a minute one could roll over).
    two.a.cli("quotas", "set", "--key", key_id, "--tokens-per-day", "400")
    spent, last, refused = 0, 0, None
    for _ in range(40):
        response = _chat(two.a, key)
        if response.status_code == 429:
            refused = response
            break
        assert response.status_code == 200, response.text
        last = _total(response)
        spent += last
    assert refused is not None, f"never refused after {spent} tokens"
    # Each request was admitted only while the real usage before it plus its estimate (at least
    # its max_tokens, 8) fitted; the last one may then use more than it was estimated to.
    assert spent - last <= 400 - 8
    error = refused.json()["error"]
    assert error["code"] == "token_quota_exceeded" and error["type"] == "rate_limit_error"
    assert "per day" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 86_400
    assert refused.headers["x-ratelimit-limit-tokens"] == "400"
    # B never served this key: only a shared count refuses it there.
    on_b = _chat(two.b, key)
    assert on_b.status_code == 429, on_b.text
    assert on_b.json()["error"]["code"] == "token_quota_exceeded"
    assert int(on_b.headers["x-ratelimit-remaining-tokens"]) == int(
        refused.headers["x-ratelimit-remaining-tokens"]
    )


def test_a_reservation_is_settled_with_the_reported_usage(two: Cluster) -> None:
    key_id, key = _key(two, "settle")
    two.a.cli("quotas", "set", "--key", key_id, "--tokens-per-day", "100000")
    first = _chat(two.a, key, max_tokens=32)
    assert first.status_code == 200, first.text
    second = _chat(two.b, key, max_tokens=32)
    assert second.status_code == 200, second.text
    third = _chat(two.a, key, max_tokens=32)
    assert third.status_code == 200, third.text
    # Each answer's header counts the earlier answers' real usage and its own estimate (the same
    # body: the same estimate), so consecutive headers differ by exactly the middle answer's
    # usage, whichever replica served it.
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in (first, second, third)]
    assert remaining[0] - remaining[1] == _total(first)
    assert remaining[1] - remaining[2] == _total(second)
    estimate = 100_000 - remaining[0]
    assert estimate >= 32  # at least the output cap was reserved
    assert third.headers["x-ratelimit-limit-tokens"] == "100000"


def test_a_tenant_quota_binds_all_its_keys(two: Cluster) -> None:
    _, first = _key(two, "t-one", tenant="quota-tenant")
    _, second = _key(two, "t-two", tenant="quota-tenant")
    two.a.cli("quotas", "set", "--tenant", "quota-tenant", "--tokens-per-day", "200")
    for _ in range(30):
        response = _chat(two.a, first)
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
    else:
        raise AssertionError("the tenant's quota never refused its first key")
    other = _chat(two.b, second)
    assert other.status_code == 429, other.text
    assert "tenant" in other.json()["error"]["message"]


def test_a_request_larger_than_the_quota_is_refused_for_good(two: Cluster) -> None:
    key_id, key = _key(two, "small")
    two.a.cli("quotas", "set", "--key", key_id, "--tokens-per-minute", "50")
    response = _chat(two.b, key, max_tokens=200)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert "retry-after" not in response.headers  # waiting would not help
    assert _chat(two.b, key, max_tokens=4).status_code == 200  # a smaller one passes


def test_a_stream_in_flight_on_one_replica_holds_the_keys_slot_on_the_other(
    two: Cluster,
) -> None:
    key_id, key = _key(two, "one-at-a-time")
    two.a.cli("quotas", "set", "--key", key_id, "--max-concurrent", "1")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count upwards from one."}],
        "max_tokens": 1500,
        "stream": True,
        "ignore_eos": True,  # llama.cpp's own field, passed through: the stream stays open
    }
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=120) as client:
        with client.stream(
            "POST", f"{two.a.url}/v1/chat/completions", json=body, headers=headers
        ) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # the first event: the request is in flight
            refused = _chat(two.b, key)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["x-ratelimit-limit-concurrent"] == "1"
        # The client went away: the slot comes back when the request settles.
    wait_until(lambda: _chat(two.b, key).status_code == 200, 120, "the key's slot given back")


def test_quota_values_are_bounded_and_set_only_with_limits_write(two: Cluster) -> None:
    key_id, _ = _key(two, "bounded")
    with httpx.Client(base_url=two.a.url, headers=two.headers, timeout=30) as admin:
        for bad in (
            {"tokens_per_minute": 0},
            {"tokens_per_day": -5},
            {"max_concurrent": 10**9},
            {"tokens_per_minute": 1e300},
            {"tokens_per_minute": "NaN"},
        ):
            response = admin.put(f"/api/keys/{key_id}/quotas", json=bad)
            assert response.status_code == 400 or response.status_code == 422, (bad, response.text)
            assert "error" in response.json()
        ok = admin.put(f"/api/keys/{key_id}/quotas", json={"tokens_per_minute": 1000})
        assert ok.status_code == 200, ok.text
        listed = {k["id"]: k for k in admin.get("/api/quotas").json()["keys"]}
        assert listed[key_id]["tokens_per_minute"] == 1000
        assert listed[key_id]["max_concurrent"] is None  # a PUT replaces: left out is no limit
