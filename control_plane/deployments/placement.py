"""Which connected runners may hold a replica of a deployment, and which of them get one.

A runner fits when it is in the deployment's pool, matches every label
constraint with its owner-set labels (never the ones its hello claims), and
announced the ``deployments`` capability on a live link. Among those that fit,
new replicas go to the runners holding the fewest replicas, so replicas spread.
The runner's own planner then accepts or refuses the model (it knows its
memory); a refusal comes back as a failed replica with the planner's reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from outpost.control_plane.db.models import Deployment
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import Link

__all__ = ["labels_match", "pick_runners", "runner_fits"]


def labels_match(labels: Mapping[str, str], constraints: Mapping[str, list[str]]) -> bool:
    """Every constrained label is set on the runner to one of its allowed values."""
    return all(labels.get(key) in allowed for key, allowed in constraints.items())


def runner_fits(runner: ConnectedRunner[Link], d: Deployment) -> bool:
    if runner.pool_id != d.pool_id or runner.tenant_id != d.tenant_id:
        return False
    if not labels_match(runner.labels, d.labels):
        return False
    return any(
        not ln.closed and not ln.draining and "deployments" in ln.capabilities
        for ln in runner.links
    )


def pick_runners(
    fitting: list[ConnectedRunner[Link]], load: Mapping[str, int], count: int
) -> list[ConnectedRunner[Link]]:
    """Up to ``count`` distinct runners, least loaded first (ties by id, so placement is stable)."""
    ranked = sorted(fitting, key=lambda r: (load.get(r.runner_id, 0), r.runner_id))
    return ranked[:count]
