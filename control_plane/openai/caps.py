"""How much one generation request may ask of an engine: one sequence, at most a known number of
tokens.

The fair scheduler admits, and usage prices, one *sequence* per request, so a
request that would make the engine generate several in one go (a prompt list,
a vendor field such as ``n_cmpl``, beam search) is refused with a 400 that says
which field and what to do instead (docs/api.md "One admitted unit per
sequence"). ``n`` > 1 is served, as ``n`` requests of one sequence each
(:func:`choices`, fanout.py). Every
request reaches the engine with an explicit token cap: the smallest of the
caps the client gave, or the deployment's ``OUTPOST_MAX_TOKENS_LIMIT`` when it
gave none, written into ``max_tokens`` and into every vendor field that the
engines read instead of it; reported usage is clamped to that cap.

:data:`VENDOR_FIELDS` is the one list, per engine, of the non-OpenAI fields
that change how many tokens or sequences an engine generates, and what the
control plane does with each. The request is checked against every engine's
list at once: which engine serves it is only known after routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["VENDOR_FIELDS", "Capped", "cap_request", "choices"]

Decision = Literal["cap", "bounded", "one"]

#: engine -> vendor field -> what is done with it:
#: ``cap``: a token cap the engine reads (instead of, or before, ``max_tokens``); it must be
#:   within the deployment's limit, the smallest cap wins, and the request reaches the engine
#:   with the effective cap in it;
#: ``bounded``: a number of tokens that must not exceed the effective cap (else 400);
#: ``one``: a number of sequences (or a switch for several), accepted only as one sequence
#:   (else 400).
VENDOR_FIELDS: dict[str, dict[str, Decision]] = {
    # llama.cpp's server reads n_predict before max_tokens; -1 means "until the context is full".
    # n_cmpl asks for several completions of one prompt. ignore_eos only runs to the cap: no entry.
    "llama.cpp": {"n_predict": "cap", "n_cmpl": "one"},
    # vLLM's sampling parameters: min_tokens above max_tokens is refused by vLLM itself, but a
    # consistent 400 here names the field; best_of and beam search generate several sequences.
    "vllm": {"min_tokens": "bounded", "best_of": "one", "use_beam_search": "one"},
}


@dataclass(frozen=True)
class Capped:
    """A generation request's effective token cap and the body the engine is sent."""

    max_tokens: int  # what the engine may generate; reported usage is clamped to it
    requested: int | None  # the client's own cap, if any (routing estimates read it)
    body: dict[str, Any]


def cap_request(
    request: ChatCompletionRequest | CompletionRequest,
    *,
    limit: int,
    window: Callable[[], int | None] = lambda: None,
) -> Capped:
    """Check the sequence count and token caps of ``request``; 400 for anything beyond one capped
    sequence.

    ``window()`` is the largest context window the runners serving the model declare. A request
    without a cap of its own, for a model whose window is no larger than ``limit``, is sent no cap:
    the window stops the engine first (and usage is clamped to it), while a cap that does not fit
    beside the prompt makes an engine that checks it (vLLM) refuse the request.
    """
    _one_sequence(request)
    extra = request.model_extra or {}
    caps: list[tuple[str, int]] = [
        (name, value)
        for name in ("max_tokens", "max_completion_tokens")
        if isinstance(value := getattr(request, name, None), int)
    ]
    cap_fields = sorted(
        {f for fields in VENDOR_FIELDS.values() for f, d in fields.items() if d == "cap"}
    )
    for name in cap_fields:
        if name in extra:
            value = _integer(name, extra[name])
            if value == -1:  # llama.cpp: "no cap"; the deployment's limit applies
                continue
            if value < 1:
                raise ApiError(
                    400,
                    f"{name} must be a positive integer or -1; got {value}.",
                    code="invalid_request",
                    param=name,
                )
            caps.append((name, value))
    for name, value in caps:
        if value > limit:
            raise ApiError(
                400,
                f"{name} {value} exceeds this deployment's limit of {limit}.",
                code="max_tokens_too_large",
                param=name,
            )
    requested = min((v for _, v in caps), default=None)
    effective = requested if requested is not None else limit
    widest = window() if requested is None else None  # read only when needed: it scans the runners
    uncapped = widest is not None and widest <= limit
    if widest is not None and uncapped:
        effective = widest
    for fields in VENDOR_FIELDS.values():
        for name, decision in fields.items():
            if decision == "bounded" and name in extra and _integer(name, extra[name]) > effective:
                raise ApiError(
                    400,
                    f"{name} {extra[name]} exceeds the request's token cap of {effective}.",
                    code="invalid_request",
                    param=name,
                )
    body = request.model_dump(mode="json", exclude_unset=True)
    if uncapped:
        return Capped(max_tokens=effective, requested=None, body=body)
    body["max_tokens"] = effective
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = effective
    for name in cap_fields:
        if name in body:
            body[name] = effective
    return Capped(max_tokens=effective, requested=requested, body=body)


def choices(request: ChatCompletionRequest | CompletionRequest, *, limit: int) -> int:
    """How many choices the request asks for (``n``; ``best_of`` only as the same number):
    each is served as a request of its own (fanout.py), at most ``limit``."""
    n = request.n or 1
    best_of = request.best_of if isinstance(request, CompletionRequest) else None
    if best_of is not None and best_of != n:
        # Picking the best needs every sequence's log probability, which not every engine
        # reports; refused rather than answered with unranked choices.
        raise ApiError(
            400,
            f"best_of={best_of} with n={n}: Outpost serves best_of only equal to n (every "
            "sequence is returned); send best_of equal to n, or leave it out.",
            code="best_of_unsupported",
            param="best_of",
        )
    if n > limit:
        raise ApiError(
            400,
            f"n={n} exceeds this deployment's limit of {limit} choices per request.",
            code="too_many_choices",
            param="n",
        )
    return n


def _one_sequence(request: ChatCompletionRequest | CompletionRequest) -> None:
    if isinstance(request, CompletionRequest):
        if (count := request.prompts()) > 1:
            raise _several("prompt", f"a list of {count} prompts", "send one request per prompt")
    extra = request.model_extra or {}
    for fields in VENDOR_FIELDS.values():
        for name, decision in fields.items():
            value = extra.get(name)
            if (
                decision != "one"
                or value is None
                or value is False
                or (type(value) is int and value == 1)
            ):
                continue
            raise _several(name, f"{name}={extra[name]!r}", "send one request per sequence")


def _several(param: str, what: str, instead: str) -> ApiError:
    return ApiError(
        400,
        f"{what} asks for several sequences in one request; Outpost admits, schedules and bills "
        f"one sequence per request: {instead}.",
        code="multiple_sequences_unsupported",
        param=param,
    )


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer.", code="invalid_request", param=name)
    return value
