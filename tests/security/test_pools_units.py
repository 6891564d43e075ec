"""Issue 19, the pure parts: eligibility by pool, bounded prices, and the replica registry carrying
pools.

No I/O: real hub objects (harness/sim.py), the real router and the real registry view.
"""

from __future__ import annotations

import math

import pytest

from harness.sim import MODEL, set_status, simulated_runner
from outpost.control_plane.cluster.registry import RemoteView, describe_runners
from outpost.control_plane.routing.routing import (
    Router,
    RouteRequest,
    any_in_pools,
    eligibility,
    usd_per_hour,
)
from outpost.control_plane.services.cost import DEFAULT_USD_PER_HOUR, hourly_rate
from outpost.control_plane.store.runners import MAX_USD_PER_HOUR, check_usd_per_hour, proposed_cost
from outpost.control_plane.tunnel.hub import TunnelHub
from outpost.sdk.pricing import CostModel


def _fleet() -> list:
    mine = simulated_runner("run_mine", usd_per_hour=5.0, pool_id="pool_mine")
    foreign = simulated_runner(
        "run_foreign", usd_per_hour=0.0, pool_id="pool_foreign", labels={"site": "x"}
    )
    for r in (mine, foreign):
        set_status(r)
    return [mine, foreign]


def test_a_runner_outside_the_callers_pools_is_ineligible_and_never_named() -> None:
    mine, foreign = _fleet()
    req = RouteRequest(model=MODEL, policy="cost", pools=frozenset({"pool_mine"}))
    assert eligibility(foreign, req) == "pool" and eligibility(mine, req) is None
    decision = Router().route([mine, foreign], req)
    # The free foreign runner would win on cost; it is not even listed among the excluded.
    assert [c.runner.runner_id for c in decision.candidates] == ["run_mine"]
    assert "run_foreign" not in decision.excluded and "run_foreign" not in decision.excluded_names
    assert any_in_pools([foreign], req) is False and any_in_pools([mine, foreign], req) is True


def test_no_pool_at_all_routes_nowhere() -> None:
    decision = Router().route(_fleet(), RouteRequest(model=MODEL, pools=frozenset()))
    assert decision.candidates == [] and decision.excluded == {}


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0, MAX_USD_PER_HOUR + 1, 1e9, True, "5"])
def test_an_owner_price_out_of_bounds_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="usd_per_hour"):
        check_usd_per_hour(bad)  # type: ignore[arg-type]


def test_a_first_hello_proposes_within_bounds_only() -> None:
    assert proposed_cost(CostModel(usd_per_hour=2.5)) == {"usd_per_hour": 2.5, "set_by": "hello"}
    greedy = CostModel(usd_per_hour=5000, hardware_class="nvidia-h100", count=2)
    assert proposed_cost(greedy)["usd_per_hour"] == DEFAULT_USD_PER_HOUR["nvidia-h100"] * 2
    metered = CostModel(watts=1e6, usd_per_kwh=1e6)
    assert proposed_cost(metered)["usd_per_hour"] == DEFAULT_USD_PER_HOUR["cpu-small"]


@pytest.mark.parametrize("rate", [math.inf, math.nan, 10**400])
def test_non_finite_rates_never_reach_routing_or_billing(rate: object) -> None:
    assert hourly_rate({"usd_per_hour": rate}) == DEFAULT_USD_PER_HOUR["cpu-small"]
    assert usd_per_hour({"usd_per_hour": rate}, 0.1) == 0.1


def test_the_registry_carries_the_pool_and_an_entry_without_one_is_in_no_pool() -> None:
    mine, _ = _fleet()
    entry = describe_runners([mine], now=0.0)
    assert entry[0]["pool_id"] == "pool_mine"
    old = {k: v for k, v in entry[0].items() if k != "pool_id"} | {"runner_id": "run_old"}
    hub = TunnelHub()
    view = RemoteView(hub, "replica-b", lambda replica, runner: _Link(replica), lambda r, up: None)
    view.apply({"replica-a": [entry[0], old]})
    assert hub.remote["run_mine"].pool_id == "pool_mine"
    assert hub.remote["run_old"].pool_id == ""  # an older replica's entry: routed to nobody
    req = RouteRequest(model=MODEL, pools=frozenset({"pool_mine", ""}) - {""})
    assert eligibility(hub.remote["run_old"], req) == "pool"


class _Link:
    """The registry view's remote link, reduced to what ``RemoteView`` touches."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id, self.draining, self.closed, self.open_streams = replica_id, False, False, 0
        self.load = None

    def fail_all(self, reason: str) -> None:
        return None


def test_model_names_of_a_tenant_are_those_of_its_pools() -> None:
    """The fairness probe form and its engine lookup list only models the tenant may call."""
    hub = TunnelHub()
    mine = simulated_runner("run_mine", pool_id="pool_mine", model="mine-model")
    foreign = simulated_runner("run_foreign", pool_id="pool_foreign", model="secret-model")
    hub.remote.update({r.runner_id: r for r in (mine, foreign)})
    assert set(hub.model_names(frozenset({"pool_mine"}))) == {"mine-model"}
    assert set(hub.model_names()) == {"mine-model", "secret-model"}
