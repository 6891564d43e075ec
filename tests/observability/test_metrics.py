"""GET /metrics on the control plane, scraped around real requests through a real runner."""

from __future__ import annotations

import json

import httpx

from tests.observability.conftest import ObservedStack, value

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"


def _chat(stack: ObservedStack, key: str | None = None, **body: object) -> httpx.Response:
    return httpx.post(
        f"{stack.cp.url}{CHAT}",
        headers={"Authorization": f"Bearer {key or stack.api_key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "temperature": 0,
            **body,
        },
        timeout=120,
    )


def _tenant(scraped: dict, kind: str = "prompt") -> str:
    return next(
        dict(labels)["tenant"]
        for name, labels in scraped
        if name == "outpost_inference_tokens_total" and dict(labels).get("kind") == kind
    )


def test_metrics_needs_the_token_when_one_is_set(observed: ObservedStack) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {observed.api_key}"},
    ):
        resp = httpx.get(f"{observed.cp.url}/metrics", headers=headers, timeout=10)
        assert resp.status_code == 401, headers
        assert resp.json()["error"]["code"] == "invalid_metrics_token"
    assert observed.scrape()  # the right token
    # Not part of the public API: kept out of the OpenAPI document (and schemathesis).
    assert (
        "/metrics" not in httpx.get(f"{observed.cp.url}/openapi.json", timeout=10).json()["paths"]
    )


def test_a_chat_completion_moves_the_counters_by_its_own_amounts(observed: ObservedStack) -> None:
    before = observed.scrape()
    resp = _chat(observed)
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    after = observed.scrape()
    tenant = _tenant(after)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        moved("outpost_inference_requests_total", endpoint=CHAT, model=MODEL, outcome="ok", code="")
        == 1
    )
    assert (
        moved("outpost_inference_tokens_total", model=MODEL, tenant=tenant, kind="prompt")
        == usage["prompt_tokens"]
    )
    assert (
        moved("outpost_inference_tokens_total", model=MODEL, tenant=tenant, kind="completion")
        == usage["completion_tokens"]
    )
    assert moved("outpost_inference_ttft_seconds_count", model=MODEL) == 1
    assert moved("outpost_http_requests_total", method="POST", route=CHAT, status="200") == 1
    assert moved("outpost_http_request_duration_seconds_count", method="POST", route=CHAT) == 1
    # The route template, never the raw path: one scrape is itself counted under /metrics.
    assert moved("outpost_http_requests_total", method="GET", route="/metrics", status="200") == 1

    # Read from live state at scrape time.
    rid = observed.runner_id
    assert value(after, "outpost_runners_connected") == 1
    assert value(after, "outpost_tunnel_connections", runner=rid) == 2  # --connections default
    assert value(after, "outpost_tunnel_streams_in_flight", runner=rid) == 0
    assert value(after, "outpost_scheduler_capacity", runner=rid) >= 1
    assert value(after, "outpost_vtc_counter", runner=rid, tenant=tenant) >= usage["prompt_tokens"]
    assert value(after, "outpost_fairness_tenant_requests", tenant=tenant) >= 1
    assert value(after, "outpost_fairness_tenant_service_weighted_tokens", tenant=tenant) > 0
    assert 0 < value(after, "outpost_fairness_jain_index") <= 1
    assert (
        value(after, "process_resident_memory_bytes") > 0
    )  # the usual process and Python metrics too
    assert (
        "outpost_fairness_tenant_ttft_seconds",
        frozenset({("tenant", tenant), ("quantile", "0.5")}),
    ) in after


def test_a_stream_counts_once_with_its_usage(observed: ObservedStack) -> None:
    before = observed.scrape()
    with httpx.stream(
        "POST",
        f"{observed.cp.url}{CHAT}",
        headers={"Authorization": f"Bearer {observed.api_key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count to three."}],
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=120,
    ) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    usage = next(
        json.loads(e)["usage"] for e in events if e != "[DONE]" and json.loads(e).get("usage")
    )
    after = observed.scrape()
    tenant = _tenant(after)
    assert (
        value(
            after,
            "outpost_inference_requests_total",
            endpoint=CHAT,
            model=MODEL,
            outcome="ok",
            code="",
        )
        - value(
            before,
            "outpost_inference_requests_total",
            endpoint=CHAT,
            model=MODEL,
            outcome="ok",
            code="",
        )
    ) == 1
    assert (
        value(
            after, "outpost_inference_tokens_total", model=MODEL, tenant=tenant, kind="completion"
        )
        - value(
            before, "outpost_inference_tokens_total", model=MODEL, tenant=tenant, kind="completion"
        )
    ) == usage["completion_tokens"]


def test_rejections_and_unknown_models_are_counted_with_bounded_labels(
    observed: ObservedStack,
) -> None:
    limited = observed.cp.cli("keys", "create", "limited", "--rate-limit-rpm", "1").splitlines()[-1]
    before = observed.scrape()
    assert _chat(observed, limited).status_code == 200
    refused = _chat(observed, limited)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    # A model nobody serves must not become a label value: clients choose these names.
    unknown = _chat(observed, model="no-such-model-" + "x" * 40)
    assert unknown.status_code == 404
    after = observed.scrape()
    tenant = _tenant(after)
    assert (
        value(after, "outpost_rejections_total", tenant=tenant, reason="rate_limit_exceeded")
        - value(before, "outpost_rejections_total", tenant=tenant, reason="rate_limit_exceeded")
    ) == 1
    assert (
        value(
            after,
            "outpost_inference_requests_total",
            endpoint=CHAT,
            model="other",
            outcome="error",
            code="model_not_found",
        )
        - value(
            before,
            "outpost_inference_requests_total",
            endpoint=CHAT,
            model="other",
            outcome="error",
            code="model_not_found",
        )
    ) == 1
    assert not any("no-such-model" in str(labels) for _, labels in after)


def test_apps_in_one_process_keep_separate_registries(tmp_path) -> None:
    from prometheus_client import REGISTRY, generate_latest

    from outpost.control_plane.app import create_app
    from outpost.control_plane.settings import Settings

    # A shared registry would refuse the second app's metrics ("Duplicated timeseries").
    create_app(Settings(state_dir=tmp_path / "a"))
    create_app(Settings(state_dir=tmp_path / "b"))
    assert b"outpost_" not in generate_latest(REGISTRY)
