"""A runner's reported usage is bounded by what the request allows."""

from __future__ import annotations

from outpost.control_plane.openai.call import InferenceCall
from outpost.control_plane.openai.lifecycle import bounded_usage as _bounded
from outpost.control_plane.routing.routing import RouteRequest
from outpost.sdk.protocol import Usage


def _call(max_tokens: int | None, max_tokens_cap: int | None = None) -> InferenceCall:
    return InferenceCall(
        tenant_id="t",
        api_key_id="k",
        body='{"messages": []}',
        stream=False,
        route=RouteRequest(model="m", max_tokens=max_tokens),
        max_tokens_cap=max_tokens_cap,
    )


def test_inflated_usage_is_clamped_to_the_request() -> None:
    usage = _bounded(Usage(prompt_tokens=10**8, completion_tokens=10**8), _call(max_tokens=16))
    assert usage.completion_tokens == 16
    assert usage.prompt_tokens == len('{"messages": []}')


def test_honest_usage_is_kept() -> None:
    usage = _bounded(Usage(prompt_tokens=5, completion_tokens=7), _call(max_tokens=16))
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 7)


def test_without_max_tokens_only_the_prompt_is_bounded() -> None:
    usage = _bounded(Usage(prompt_tokens=5, completion_tokens=900), _call(max_tokens=None))
    assert usage.completion_tokens == 900


def test_without_max_tokens_the_cap_the_engine_was_sent_bounds_usage() -> None:
    # openai/caps.py: the deployment's limit, written into the engine's request
    call = _call(max_tokens=None, max_tokens_cap=64)
    usage = _bounded(Usage(prompt_tokens=5, completion_tokens=10**7), call)
    assert usage.completion_tokens == 64


def test_the_models_context_window_bounds_prompt_and_completion() -> None:
    usage = _bounded(
        Usage(prompt_tokens=10, completion_tokens=900), _call(max_tokens=None), context_length=8
    )
    assert (usage.prompt_tokens, usage.completion_tokens) == (8, 8)
