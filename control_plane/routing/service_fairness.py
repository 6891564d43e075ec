"""Live tenant service fairness: is the fleet sharing itself out fairly?

Per tenant, over a sliding window (default 60 s), we record:

* weighted service: input tokens x 1 + output tokens x 2 (the cost VTC
  charges), divided by the tenant's weight when compared;
* time to first token and queue wait (percentiles);
* rejections (queue full, timeout, budget, rate limit).

From these, over the tenants that were *backlogged* in the window:

* Jain's index ``(sum x)^2 / (n * sum x^2)`` of weight-normalised service:
  1.0 when all got the same, ``1/n`` when one got everything;
* worst normalised share ``min x / mean x``: 1.0 is fair, 0.0 is starved;
* largest service gap ``max x - min x``: VTC's measure (Sheng et al., OSDI
  2024), the difference in weighted service between two backlogged tenants.

Only backlogged tenants count because a tenant that asked for little and got
all of it is not a victim: including it would make a perfectly fair scheduler
look unfair. A tenant is backlogged in the window when it waited in a queue,
was rejected, or was marked backlogged explicitly (the lead can pass the
scheduler's queued tenants).

Memory is bounded: service and counts live in a fixed number of time buckets
per tenant; latency samples are capped per tenant; idle tenants are dropped.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from outpost.control_plane.services.scheduler import weighted_tokens

__all__ = [
    "LatencySummary",
    "ServiceFairness",
    "ServiceFairnessSnapshot",
    "TenantFairnessSnapshot",
    "jain_index",
    "max_service_gap",
    "percentile",
    "worst_normalized_share",
]


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index; 1.0 for an empty or all-zero population."""
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return total * total / (len(values) * squares)


def worst_normalized_share(values: Sequence[float]) -> float:
    """The smallest value divided by the mean (its share over the fair share)."""
    if not values:
        return 1.0
    mean = sum(values) / len(values)
    return 1.0 if mean == 0 else min(values) / mean


def max_service_gap(values: Sequence[float]) -> float:
    """The largest difference in service between any two tenants."""
    return max(values) - min(values) if values else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


class LatencySummary(TypedDict):
    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class TenantFairnessSnapshot(TypedDict):
    weight: float
    backlogged: bool
    requests: int
    rejections: int
    service_weighted_tokens: float
    normalized_service: float
    ttft_seconds: LatencySummary
    queue_wait_seconds: LatencySummary


class ServiceFairnessSnapshot(TypedDict):
    window_seconds: float
    tenants_active: int
    tenants_backlogged: int
    jain_index: float
    worst_normalized_share: float
    max_service_gap: float
    tenants: dict[str, TenantFairnessSnapshot]


@dataclass
class _Bucket:
    index: int
    service: float = 0.0
    requests: int = 0
    rejections: int = 0
    backlogged: bool = False


@dataclass
class _Tenant:
    weight: float = 1.0
    buckets: deque[_Bucket] = field(default_factory=deque)
    ttft: deque[tuple[float, float]] = field(default_factory=deque)
    queue_wait: deque[tuple[float, float]] = field(default_factory=deque)


class ServiceFairness:
    """Sliding-window service fairness metrics per tenant.

    ``buckets`` sets the window's resolution: service recorded up to
    ``window_s / buckets`` seconds before the window's start may still count.
    ``max_samples`` caps latency samples per tenant and series (the newest
    are kept). Waits longer than ``backlog_wait_s`` mark a tenant backlogged.
    """

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        buckets: int = 12,
        max_samples: int = 1024,
        backlog_wait_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or buckets < 1 or max_samples < 1:
            raise ValueError("window_s, buckets and max_samples must be positive")
        self._window = window_s
        self._bucket_s = window_s / buckets
        self._buckets = buckets
        self._max_samples = max_samples
        self._backlog_wait_s = backlog_wait_s
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}

    def record_service(
        self,
        tenant_id: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        weight: float = 1.0,
    ) -> None:
        """Record tokens served to a tenant (may be called per chunk while streaming)."""
        if weight <= 0:
            raise ValueError("weight must be > 0")
        tenant = self._tenant(tenant_id)
        tenant.weight = weight
        self._bucket(tenant).service += weighted_tokens(prompt_tokens, completion_tokens)

    def record_request(self, tenant_id: str) -> None:
        """Count one request admitted for the tenant."""
        self._bucket(self._tenant(tenant_id)).requests += 1

    def record_ttft(self, tenant_id: str, seconds: float) -> None:
        self._sample(self._tenant(tenant_id).ttft, seconds)

    def record_queue_wait(self, tenant_id: str, seconds: float) -> None:
        tenant = self._tenant(tenant_id)
        self._sample(tenant.queue_wait, seconds)
        if seconds > self._backlog_wait_s:
            self._bucket(tenant).backlogged = True

    def record_rejection(self, tenant_id: str) -> None:
        """Count a request turned away; a rejected tenant wanted more than it got."""
        bucket = self._bucket(self._tenant(tenant_id))
        bucket.rejections += 1
        bucket.backlogged = True

    def mark_backlogged(self, tenant_ids: Iterable[str]) -> None:
        """Mark tenants backlogged now, e.g. those queued in the scheduler's snapshot."""
        for tenant_id in tenant_ids:
            self._bucket(self._tenant(tenant_id)).backlogged = True

    def snapshot(self) -> ServiceFairnessSnapshot:
        """Metrics over the window; latency percentiles are ``None`` without samples."""
        self._expire()
        tenants: dict[str, TenantFairnessSnapshot] = {}
        backlogged_service: list[float] = []
        for tenant_id, tenant in sorted(self._tenants.items()):
            service = sum(b.service for b in tenant.buckets)
            backlogged = any(b.backlogged for b in tenant.buckets)
            normalized = service / tenant.weight
            if backlogged:
                backlogged_service.append(normalized)
            tenants[tenant_id] = TenantFairnessSnapshot(
                weight=tenant.weight,
                backlogged=backlogged,
                requests=sum(b.requests for b in tenant.buckets),
                rejections=sum(b.rejections for b in tenant.buckets),
                service_weighted_tokens=service,
                normalized_service=normalized,
                ttft_seconds=_summary(tenant.ttft),
                queue_wait_seconds=_summary(tenant.queue_wait),
            )
        return ServiceFairnessSnapshot(
            window_seconds=self._window,
            tenants_active=len(tenants),
            tenants_backlogged=len(backlogged_service),
            jain_index=jain_index(backlogged_service),
            worst_normalized_share=worst_normalized_share(backlogged_service),
            max_service_gap=max_service_gap(backlogged_service),
            tenants=tenants,
        )

    # -- internals -------------------------------------------------------

    def _tenant(self, tenant_id: str) -> _Tenant:
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = _Tenant()
        return tenant

    def _bucket(self, tenant: _Tenant) -> _Bucket:
        index = math.floor(self._clock() / self._bucket_s)
        if not tenant.buckets or tenant.buckets[-1].index != index:
            tenant.buckets.append(_Bucket(index))
            # Bounded even between snapshots: older buckets are outside the window.
            while len(tenant.buckets) > self._buckets + 1:
                tenant.buckets.popleft()
        return tenant.buckets[-1]

    def _sample(self, samples: deque[tuple[float, float]], value: float) -> None:
        samples.append((self._clock(), value))
        while len(samples) > self._max_samples:
            samples.popleft()

    def _expire(self) -> None:
        now = self._clock()
        start = now - self._window
        first_index = math.floor(start / self._bucket_s)
        for tenant_id in list(self._tenants):
            tenant = self._tenants[tenant_id]
            while tenant.buckets and tenant.buckets[0].index < first_index:
                tenant.buckets.popleft()
            for samples in (tenant.ttft, tenant.queue_wait):
                while samples and samples[0][0] < start:
                    samples.popleft()
            if not (tenant.buckets or tenant.ttft or tenant.queue_wait):
                del self._tenants[tenant_id]


def _summary(samples: deque[tuple[float, float]]) -> LatencySummary:
    if not samples:
        return LatencySummary(count=0, p50=None, p95=None, p99=None)
    values = sorted(v for _, v in samples)
    return LatencySummary(
        count=len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )
