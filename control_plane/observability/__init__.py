"""Prometheus metrics, request ids and log format for the control plane (docs/deploy.md)."""

from __future__ import annotations

from fastapi import FastAPI

from outpost.control_plane.observability.collector import StateCollector
from outpost.control_plane.observability.metrics import ControlPlaneMetrics
from outpost.control_plane.observability.middleware import ObservabilityMiddleware, record_id
from outpost.control_plane.observability.route import router

__all__ = ["ControlPlaneMetrics", "StateCollector", "install_observability", "record_id"]


def install_observability(app: FastAPI) -> ControlPlaneMetrics:
    """``GET /metrics`` and the request-id/HTTP-metrics middleware; call last, so it wraps
    everything."""
    metrics = ControlPlaneMetrics()
    app.include_router(router)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return metrics
