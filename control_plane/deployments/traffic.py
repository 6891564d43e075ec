"""The A/B split of deployments sharing a public name (docs/deployments.md "Routing and A/B").

A mixin of :class:`~control_plane.deployments.reconciler.Reconciler`: the request path asks
it which runners a request's first attempt may use.
"""

from __future__ import annotations

import random
import time

from outpost.control_plane.db.models import Deployment
from outpost.control_plane.tunnel.hub import ConnectedRunner

__all__ = ["TrafficMixin"]


class TrafficMixin:
    # Routed replica id -> its deployment; deployment id -> weight, names.
    _routed: dict[str, str]
    _weights: dict[str, float]
    _names: dict[str, frozenset[str]]
    # Public name -> monotonic time of its last request here (scale to zero's idle clock).
    _used: dict[str, float]

    def note(self, d: Deployment) -> None:
        """An API write changed ``d``: its weight counts from the next request on."""
        self._weights[d.id], self._names[d.id] = d.weight, frozenset((d.name, *d.aliases))

    def split(self, model: str, runners: list[ConnectedRunner]) -> list[ConnectedRunner]:
        """Of the runners serving ``model``, those of one deployment, drawn by weight.

        Deployments sharing a public name split its requests by their ``weight``; runners
        serving it as a static model count as one more group of weight 1. With one group
        (the usual case) the list is returned as it is.
        """
        self._used[model] = time.monotonic()  # idle time of scale-to-zero deployments
        if not any(r.deployed for r in runners):
            return runners
        groups: dict[str, list[ConnectedRunner]] = {}
        for r in runners:
            owner = next(
                (
                    dep
                    for rep in r.deployed
                    if (dep := self._routed.get(rep)) and model in self._names.get(dep, ())
                ),
                "",
            )
            groups.setdefault(owner, []).append(r)
        live = {k: v for k, v in groups.items() if any(r.usable_link() is not None for r in v)}
        if len(live) <= 1:
            return runners
        keys = sorted(live)
        weights = [self._weights.get(k, 1.0) if k else 1.0 for k in keys]
        if sum(weights) <= 0:
            return runners
        return live[random.choices(keys, weights)[0]]  # noqa: S311 - a traffic split, not a secret
