"""A model whose engine is down on every runner serving it: the reason, and the error the caller
reads.

The end-to-end version (a real hung llama.cpp engine) is tests/runner/test_multi_model_e2e.py.
"""

from __future__ import annotations

from harness.sim import MODEL, set_status, simulated_runner
from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.failover import _ineligible_error
from outpost.control_plane.routing.routing import ENGINE_DOWN, Router, RouteRequest, eligibility
from outpost.sdk.protocol import StatusFrame


def _report_down(runner, *models: str, healthy: bool = True) -> None:
    for link in runner.links:
        link.dispatch(StatusFrame(healthy=healthy, unavailable_models=list(models)))


def test_unavailable_model_is_restarting_and_a_runner_with_no_engine_up_is_unhealthy() -> None:
    two = simulated_runner("two")
    _report_down(two, MODEL)  # its other engines still serve
    old = simulated_runner("old")
    set_status(old, healthy=False)  # a runner without per-model status, its one engine down
    req = RouteRequest(model=MODEL)
    assert eligibility(two, req) == "restarting" and eligibility(old, req) == "unhealthy"
    assert {"restarting", "unhealthy"} == ENGINE_DOWN


def test_the_error_names_the_engine_and_the_runners_instead_of_busy_or_draining() -> None:
    a, b = simulated_runner("r-a"), simulated_runner("r-b")
    a.name, b.name = "gpu-box", "lab-2"
    _report_down(a, MODEL, healthy=False)
    set_status(b, healthy=False)
    call = InferenceCall(
        tenant_id="ten_1", api_key_id=None, route=RouteRequest(model=MODEL), body="{}", stream=False
    )
    decision = Router().route([a, b], call.route)
    assert decision.excluded == {"r-a": "restarting", "r-b": "unhealthy"}
    error = _ineligible_error(call, decision)
    assert error is not None and error.status == 503
    assert str(error) == (
        f"The engine serving '{MODEL}' is unavailable (restarting or loading) on runner(s) "
        "'gpu-box', 'lab-2'; retry shortly."
    )


def test_a_draining_runner_beside_a_restarting_one_keeps_the_general_answer() -> None:
    a, b = simulated_runner("r-a"), simulated_runner("r-b")
    _report_down(a, MODEL)
    b.links[0].draining = True
    call = InferenceCall(
        tenant_id="ten_1", api_key_id=None, route=RouteRequest(model=MODEL), body="{}", stream=False
    )
    assert _ineligible_error(call, Router().route([a, b], call.route)) is None
