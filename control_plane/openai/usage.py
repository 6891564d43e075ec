"""Bounds on the usage a runner reports: runner output is untrusted (issue 12, API10)."""

from __future__ import annotations

from sdk.protocol import Usage

__all__ = ["clamp_usage"]


def clamp_usage(usage: Usage, *, body_chars: int, max_tokens: int | None) -> Usage:
    """No more than the request allows: a completion has at most ``max_tokens`` tokens and a prompt at
    most one token per character of the request body, so a lying runner cannot bill a tenant for more
    than the request could have cost. Used where the request is priced (openai/serving.py) and where a
    relayed request's tenant counter is charged (cluster/holder.py)."""
    completion = usage.completion_tokens if max_tokens is None else min(usage.completion_tokens, max_tokens)
    return Usage(prompt_tokens=min(usage.prompt_tokens, body_chars), completion_tokens=completion)
