"""Bounds on the usage a runner reports: runner output is untrusted (issue 12, API10; issue 19)."""

from __future__ import annotations

from outpost.sdk.protocol import Usage

__all__ = ["clamp_usage"]


def clamp_usage(
    usage: Usage, *, body_chars: int, max_tokens: int | None, context_length: int | None = None
) -> Usage:
    """No more than the request allows: a completion has at most ``max_tokens`` tokens and a prompt
    at most one token per character of the request body, so a lying runner cannot bill a tenant for
    more than the request could have cost. ``max_tokens`` is the cap the engine was sent: the
    client's, or the deployment's limit when the client gave none (openai/caps.py), so only a
    request that sets no cap at all (an e2e request whose sealed body the control plane cannot read)
    is bounded by the contract alone (``sdk.protocol.MAX_TOKENS``). A token id in a prompt takes at
    least one character too, so the prompt bound holds for token-id prompts. ``context_length``,
    when the runner declared one for the model, bounds each of them too (a runner could declare a
    huge one: it is only a bound). Used where the request is priced (openai/serving.py) and where a
    relayed request's tenant counter is charged (cluster/holder.py)."""
    completion = (
        usage.completion_tokens if max_tokens is None else min(usage.completion_tokens, max_tokens)
    )
    prompt = min(usage.prompt_tokens, body_chars)
    if context_length is not None:  # the model's window, as its runner declared it, holds both
        prompt, completion = min(prompt, context_length), min(completion, context_length)
    return Usage(prompt_tokens=prompt, completion_tokens=completion)
