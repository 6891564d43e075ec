"""What one inference request asks for: an immutable description the request path reads."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from outpost.control_plane.observability import record_id
from outpost.control_plane.routing.routing import Endpoint, RouteRequest
from outpost.sdk.protocol import EndFrame, Usage

__all__ = ["ENDPOINTS_BY_NAME", "ENDPOINT_PATHS", "InferenceCall"]

#: The OpenAI path a runner's engine is asked on, by the capability the route needs.
ENDPOINT_PATHS: dict[Endpoint, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
    "rerank": "/v1/rerank",
}
#: The capability by the path's name under ``/v1/`` (and under the end-to-end prefix).
ENDPOINTS_BY_NAME: dict[str, Endpoint] = {
    path.removeprefix("/v1/"): kind for kind, path in ENDPOINT_PATHS.items()
}


@dataclass(frozen=True)
class InferenceCall:
    tenant_id: str
    api_key_id: str | None
    # What the router needs: the model, the endpoint's capability, pools, residency, caps.
    route: RouteRequest
    body: str
    stream: bool
    sealed: bool = False
    tenant_weight: float = 1.0  # fair-share weight in the runner queues (Tenant.weight)
    # End-to-end: the one runner the sealed body is bound to, and the check that
    # turns its signed receipt into usage (the body cannot be read to count tokens).
    runner_id: str | None = None
    # The token cap the engine was sent (the client's, else the deployment's limit): usage is
    # clamped to it.
    max_tokens_cap: int | None = None
    usage_from_receipt: Callable[[EndFrame], Usage | None] | None = None
    # Returns when the client has disconnected (openai/disconnect.py): a queued request then leaves
    # its queue.
    client_gone: Callable[[], Awaitable[object]] | None = None
    # The record's id: the HTTP request's id when this server made it (control_plane/observability).
    request_id: str = field(default_factory=record_id)
    # Called once with the final usage when the request settles (quotas: the real tokens).
    on_settled: Callable[[Usage], None] | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def model(self) -> str:
        return self.route.model

    @property
    def path(self) -> str:
        """The OpenAI path the engine is asked on (and the record's ``endpoint``)."""
        return ENDPOINT_PATHS[self.route.endpoint]

    @property
    def usage_cap(self) -> int | None:
        """The completion tokens the request may be billed: the client's cap, else the one the
        engine was sent."""
        return self.route.max_tokens if self.route.max_tokens is not None else self.max_tokens_cap
