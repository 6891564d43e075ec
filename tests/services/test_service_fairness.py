"""Tenant service fairness: Jain's index, shares, gaps, percentiles, window."""

from __future__ import annotations

import pytest

from outpost.control_plane.routing.service_fairness import (
    ServiceFairness,
    jain_index,
    max_service_gap,
    percentile,
    worst_normalized_share,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_jain_index_known_values(n: int) -> None:
    assert jain_index([7.0] * n) == pytest.approx(1.0)
    assert jain_index([1.0] + [0.0] * (n - 1)) == pytest.approx(1 / n)


def test_jain_index_worked_example_and_edges() -> None:
    assert jain_index([300.0, 100.0]) == pytest.approx(400**2 / (2 * (300**2 + 100**2)))
    assert jain_index([]) == 1.0
    assert jain_index([0.0, 0.0]) == 1.0


def test_worst_share_and_gap() -> None:
    assert worst_normalized_share([100.0, 100.0]) == 1.0
    assert worst_normalized_share([300.0, 100.0]) == pytest.approx(0.5)
    assert worst_normalized_share([1.0, 0.0, 0.0]) == 0.0
    assert max_service_gap([300.0, 100.0, 250.0]) == 200.0
    assert max_service_gap([]) == 0.0


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_snapshot_over_backlogged_tenants_normalized_by_weight() -> None:
    clock = FakeClock()
    metrics = ServiceFairness(clock=clock)
    metrics.record_service("gold", prompt_tokens=100, completion_tokens=100, weight=3.0)  # 300
    metrics.record_service("free", prompt_tokens=60, completion_tokens=20)  # 100
    metrics.record_service("idle-ish", prompt_tokens=5)  # never waited: not counted
    metrics.record_queue_wait("gold", 0.2)
    metrics.record_queue_wait("free", 0.4)
    snapshot = metrics.snapshot()
    assert snapshot["tenants_active"] == 3
    assert snapshot["tenants_backlogged"] == 2
    assert snapshot["jain_index"] == pytest.approx(1.0)  # 300/3 == 100/1
    assert snapshot["worst_normalized_share"] == pytest.approx(1.0)
    assert snapshot["max_service_gap"] == pytest.approx(0.0)
    gold = snapshot["tenants"]["gold"]
    assert gold["service_weighted_tokens"] == 300
    assert gold["normalized_service"] == pytest.approx(100)
    assert snapshot["tenants"]["idle-ish"]["backlogged"] is False

    metrics.record_service("free", completion_tokens=100)  # free now has 300
    snapshot = metrics.snapshot()
    assert snapshot["jain_index"] == pytest.approx(400**2 / (2 * (100**2 + 300**2)))
    assert snapshot["worst_normalized_share"] == pytest.approx(0.5)
    assert snapshot["max_service_gap"] == pytest.approx(200)


def test_rejections_mark_backlog_and_are_counted() -> None:
    metrics = ServiceFairness(clock=FakeClock())
    metrics.record_rejection("a")
    metrics.record_rejection("a")
    metrics.mark_backlogged(["b"])
    metrics.record_service("b", prompt_tokens=10)
    metrics.record_request("b")
    snapshot = metrics.snapshot()
    assert snapshot["tenants"]["a"]["rejections"] == 2
    assert snapshot["tenants"]["b"]["requests"] == 1
    assert snapshot["tenants_backlogged"] == 2
    assert snapshot["jain_index"] == pytest.approx(0.5)  # one of two got everything


def test_latency_percentiles_per_tenant() -> None:
    metrics = ServiceFairness(clock=FakeClock())
    for ms in range(1, 101):
        metrics.record_ttft("a", ms / 1000)
        metrics.record_queue_wait("a", ms / 100)
    snapshot = metrics.snapshot()["tenants"]["a"]
    assert snapshot["ttft_seconds"]["count"] == 100
    assert snapshot["ttft_seconds"]["p50"] == pytest.approx(0.0505)
    assert snapshot["ttft_seconds"]["p99"] == pytest.approx(0.09901)
    assert snapshot["queue_wait_seconds"]["p95"] == pytest.approx(0.9505)
    metrics.record_service("b", prompt_tokens=1)
    assert metrics.snapshot()["tenants"]["b"]["ttft_seconds"] == {
        "count": 0,
        "p50": None,
        "p95": None,
        "p99": None,
    }


def test_window_slides_and_memory_stays_bounded() -> None:
    clock = FakeClock()
    metrics = ServiceFairness(window_s=60, buckets=6, max_samples=10, clock=clock)
    for _ in range(50):
        metrics.record_ttft("a", 1.0)
        metrics.record_service("a", prompt_tokens=1)
        clock.now += 1
    snapshot = metrics.snapshot()["tenants"]["a"]
    assert snapshot["ttft_seconds"]["count"] == 10  # newest samples only
    assert snapshot["service_weighted_tokens"] == 50
    clock.now += 30  # the first ~30 s of service fall out (bucket resolution 10 s)
    served = metrics.snapshot()["tenants"]["a"]["service_weighted_tokens"]
    assert 20 <= served <= 30
    clock.now += 120
    assert metrics.snapshot()["tenants"] == {}  # idle tenants are dropped


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        ServiceFairness(window_s=0)
    with pytest.raises(ValueError):
        ServiceFairness().record_service("a", weight=0)
