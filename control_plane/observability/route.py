"""``GET /metrics``: the Prometheus text format, optionally behind a bearer token.

Open when ``OUTPOST_METRICS_TOKEN`` is unset (the usual exporter default, for
a port only the operator's network reaches); otherwise it must come as
``Authorization: Bearer <token>``, compared in constant time. API keys are
not accepted here: a scraper should not hold a tenant's key. docs/security.md.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from outpost.control_plane.errors import ApiError

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # async: the state collector must run on the event loop's thread, beside the state it reads.
    state = request.app.state.outpost
    token = state.settings.metrics_token.get_secret_value() if state.settings.metrics_token else ""
    if token:  # an empty OUTPOST_METRICS_TOKEN (compose's ${VAR:-}) means unset
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(
                401,
                "GET /metrics needs Authorization: Bearer <OUTPOST_METRICS_TOKEN>.",
                type="authentication_error",
                code="invalid_metrics_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
