"""Ranking of eligible runners for one request."""

from __future__ import annotations

from control_plane.tunnel.hub import ConnectedRunner

__all__ = ["rank_candidates"]


def rank_candidates(runners: list[ConnectedRunner]) -> list[ConnectedRunner]:
    """Least loaded first: open requests relative to advertised capacity."""
    return sorted(runners, key=lambda r: (r.in_flight / max(r.capacity, 1), r.runner_id))
