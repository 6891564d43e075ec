"""The control plane's Prometheus metrics: what is counted as it happens.

Everything that already exists as state (connected runners, open streams,
fair queues, virtual token counters, the service-fairness window) is read at
scrape time by :mod:`control_plane.observability.collector` instead, so the
request path only pays for the few counters below.

Each app has its own :class:`~prometheus_client.CollectorRegistry`: several
apps in one process (tests) do not collide, and nothing lands in the global
registry by import.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)

__all__ = ["LATENCY_BUCKETS", "ControlPlaneMetrics"]

#: Seconds; from a cached answer on loopback to a long generation.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # What a scraper expects of any process (process_cpu_seconds_total, _resident_memory_bytes,
        # python_gc_*, python_info): the library's stateless collectors, shared by every registry.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.http_requests = Counter(
            "outpost_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "outpost_http_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_requests = Counter(
            "outpost_inference_requests",
            "OpenAI-compatible requests by model and outcome "
            "(ok, error, cancelled) and error code.",
            ["endpoint", "model", "outcome", "code"],
            registry=r,
        )
        self.ttft = Histogram(
            "outpost_inference_ttft_seconds",
            "Time to the first byte from the runner, queueing included.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "outpost_inference_tokens",
            "Tokens counted by the runners: kind=prompt (in) or completion (out).",
            ["model", "tenant", "kind"],
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.rejections = Counter(
            "outpost_rejections",
            "Requests refused before reaching a runner, by tenant and reason "
            "(rate_limit_exceeded, budget_exceeded, queue_full, queue_timeout).",
            ["tenant", "reason"],
            registry=r,
        )

    # -- HTTP ------------------------------------------------------------------

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"  # clients choose methods too
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:  # labels() validates and locks: ~2 us a call, so once per series
            children = self._http_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- inference -------------------------------------------------------------

    def observe_inference(
        self,
        *,
        endpoint: str,
        model: str,
        tenant_id: str,
        outcome: str,
        code: str | None,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """One request, once it is over. ``model`` must already be bounded (a served name, or
        ``other``)."""
        self.inference_requests.labels(endpoint, model, outcome, code or "").inc()
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if prompt_tokens:
            self.tokens.labels(model, tenant_id, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, tenant_id, "completion").inc(completion_tokens)
        if code in ("budget_exceeded", "queue_full", "queue_timeout"):
            self.reject(tenant_id, code)

    def reject(self, tenant_id: str, reason: str) -> None:
        self.rejections.labels(tenant_id, reason).inc()
