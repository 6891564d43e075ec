"""Metrics read from live state at scrape time, not counted on the request path.

The hub (runners, links, open streams), the fair scheduler (queues, virtual
token counters) and the service-fairness window already hold these numbers;
a scrape copies them. The collector runs in the event loop's thread (the
``/metrics`` route is ``async``), so it reads that state without locks.

Tenant and runner ids appear as labels: they are opaque ids, not secrets,
and operators need them (docs/security.md says who may scrape).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from outpost.control_plane.state import AppState

__all__ = ["StateCollector"]


class StateCollector(Collector):
    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._tunnel()
        yield from self._scheduler()
        yield from self._fairness()

    def _tunnel(self) -> Iterator[Metric]:
        hub = self._state.hub
        yield GaugeMetricFamily(
            "outpost_runners_connected",
            "Runners with a tunnel to this replica.",
            value=len(hub.runners),
        )
        yield GaugeMetricFamily(
            "outpost_runners_remote",
            "Runners reachable only through another replica.",
            value=sum(1 for k in hub.remote if k not in hub.runners),
        )
        links = GaugeMetricFamily(
            "outpost_tunnel_connections", "Live tunnel connections per runner.", labels=["runner"]
        )
        streams = GaugeMetricFamily(
            "outpost_tunnel_streams_in_flight",
            "Open request streams per runner.",
            labels=["runner"],
        )
        completed = CounterMetricFamily(
            "outpost_runner_completed_streams",
            "Streams the runner reports answered since it started (its status frames).",
            labels=["runner"],
        )
        for runner_id, runner in hub.runners.items():
            live = [ln for ln in runner.links if not ln.closed]
            links.add_metric([runner_id], len(live))
            streams.add_metric([runner_id], sum(ln.open_streams for ln in live))
            completed.add_metric([runner_id], max((ln.load.completed for ln in live), default=0))
        yield links
        yield streams
        yield completed

    def _scheduler(self) -> Iterator[Metric]:
        snapshot = self._state.admission.scheduler.snapshot()
        capacity = GaugeMetricFamily(
            "outpost_scheduler_capacity",
            "Slots the scheduler admits per runner.",
            labels=["runner"],
        )
        queued = GaugeMetricFamily(
            "outpost_scheduler_queue_depth",
            "Requests waiting for a runner slot.",
            labels=["runner", "tenant"],
        )
        in_flight = GaugeMetricFamily(
            "outpost_scheduler_in_flight",
            "Requests holding a runner slot.",
            labels=["runner", "tenant"],
        )
        # Per runner only: the scheduler counts abandoned requests per runner, not per tenant.
        # Its count starts again at 0 when a runner is forgotten (last tunnel lost), a counter
        # reset.
        abandoned = CounterMetricFamily(
            "outpost_scheduler_abandoned",
            "Requests that left a runner's queue "
            "unserved: client gone, queue timeout or cancelled.",
            labels=["runner"],
        )
        counters = GaugeMetricFamily(
            "outpost_vtc_counter",
            "Virtual Token Counter per runner and tenant "
            "(weighted tokens: input x1, output x2, divided by the tenant weight).",
            labels=["runner", "tenant"],
        )
        for runner_id, r in snapshot["runners"].items():
            capacity.add_metric([runner_id], r["capacity"])
            abandoned.add_metric([runner_id], r["abandoned"])
            for tenant, n in r["queued_by_tenant"].items():
                queued.add_metric([runner_id, tenant], n)
            for tenant, n in r["in_flight_by_tenant"].items():
                in_flight.add_metric([runner_id, tenant], n)
            for tenant, value in r["counters"].items():
                counters.add_metric([runner_id, tenant], value)
        yield capacity
        yield queued
        yield in_flight
        yield abandoned
        yield counters

    def _fairness(self) -> Iterator[Metric]:
        admission = self._state.admission
        sched = admission.scheduler.snapshot()
        admission.fairness.mark_backlogged(
            {t for r in sched["runners"].values() for t in r["queued_by_tenant"]}
        )
        fair = admission.fairness.snapshot()
        window = f"over the last {fair['window_seconds']:g}s"
        for name, value, what in (
            (
                "jain_index",
                fair["jain_index"],
                "Jain's index of normalized service over backlogged tenants",
            ),
            (
                "worst_normalized_share",
                fair["worst_normalized_share"],
                "Smallest backlogged tenant's normalized service over the mean",
            ),
            (
                "max_service_gap",
                fair["max_service_gap"],
                "Largest difference in normalized service between backlogged tenants, weighted "
                "tokens",
            ),
            ("tenants_active", fair["tenants_active"], "Tenants with requests"),
            ("tenants_backlogged", fair["tenants_backlogged"], "Tenants that had to queue"),
        ):
            yield GaugeMetricFamily(f"outpost_fairness_{name}", f"{what}, {window}.", value=value)
        per_tenant = {
            "service_weighted_tokens": "Weighted tokens served (input x1, output x2)",
            "normalized_service": "Weighted tokens served divided by the tenant weight",
            "requests": "Requests",
            "rejections": "Requests refused (rate, budget, queue)",
        }
        families = {
            k: GaugeMetricFamily(
                f"outpost_fairness_tenant_{k}", f"{v}, {window}.", labels=["tenant"]
            )
            for k, v in per_tenant.items()
        }
        latency = {
            k: GaugeMetricFamily(
                f"outpost_fairness_tenant_{k}",
                f"{what} percentiles, {window}.",
                labels=["tenant", "quantile"],
            )
            for k, what in (
                ("ttft_seconds", "Time to first byte"),
                ("queue_wait_seconds", "Queue wait"),
            )
        }
        # The keys come from the literal tuples above; mypy indexes a TypedDict only with a
        # literal, not with a variable that holds one.
        for tenant, t in fair["tenants"].items():
            for key, family in families.items():
                family.add_metric([tenant], float(t[key]))  # type: ignore[literal-required]
            for key, family in latency.items():
                summary = t[key]  # type: ignore[literal-required]
                for q, quantile in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
                    if summary[q] is not None:
                        family.add_metric([tenant, quantile], summary[q])
        yield from families.values()
        yield from latency.values()
