"""The A/B split of deployments sharing a public name (docs/deployments.md "Routing and A/B").

A mixin of :class:`~control_plane.deployments.reconciler.Reconciler`: the request path asks
it which runners a request's first attempt may use, and which name to ask a runner for. A
replica on a runner that announced ``served-names`` answers there to a name of its own (its
deployment's id), so two deployments of one public name can share a runner: the request
carries the drawn deployment's served name, and the runner answers with the public one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from outpost.control_plane.db.models import Deployment
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.sdk.protocol import ModelInfo

__all__ = ["TrafficMixin"]

log = logging.getLogger(__name__)

#: The group of runners serving a public name as a static model (no deployment).
_STATIC = ""


class TrafficMixin:
    # Routed replica id -> its deployment; deployment id -> weight, names.
    _routed: dict[str, str]
    _weights: dict[str, float]
    _names: dict[str, frozenset[str]]
    # Routed replica id -> the name it answers to on its runner (deploy.v1 ``served_name``).
    _served: dict[str, str]
    # Public name -> monotonic time of its last request here (scale to zero's idle clock).
    _used: dict[str, float]
    # Scale to zero: name -> (deployment id, pool id) asleep; deployment id -> its wake task.
    _sleeping: dict[str, list[tuple[str, str]]]
    _waking: dict[str, asyncio.Task[bool]]

    if TYPE_CHECKING:  # ScalingMixin's, beside this one in the Reconciler

        async def wake_for(
            self, model: str, pools: frozenset[str] | None, only: str | None = None
        ) -> bool: ...

    def note(self, d: Deployment) -> None:
        """An API write changed ``d``: its weight counts from the next request on."""
        self._weights[d.id], self._names[d.id] = d.weight, frozenset((d.name, *d.aliases))

    def _owners(self, runner: ConnectedRunner, model: str) -> list[tuple[str, str]]:
        """(deployment id, replica id) of the runner's routed replicas serving ``model``."""
        return [
            (dep, rep)
            for rep in runner.deployed
            if (dep := self._routed.get(rep)) and model in self._names.get(dep, ())
        ]

    def split(
        self, model: str, runners: list[ConnectedRunner], pools: frozenset[str] | None = None
    ) -> tuple[list[ConnectedRunner], str | None]:
        """Of the runners serving ``model``, those of one deployment, drawn by weight, and that
        deployment's id (None: no draw, or the static group).

        Deployments sharing a public name split its requests by their ``weight``; runners
        serving it as a static model count as one more group of weight 1. A runner holding
        replicas of several of them (served names) is in each of their groups. With one group
        (the usual case) the list is returned as it is. A deployment of the name scaled to zero
        (in ``pools``, the caller's) is in the draw too: drawn, it wakes, and this request goes
        to one that is up (it does not wait while another serves the name).
        """
        if runners:  # a served name (a client's made-up name must not grow this)
            self._used[model] = time.monotonic()  # idle time of scale-to-zero deployments
        # Only the caller's pools take part: another tenant's deployment of the same name (and
        # its weight) must neither draw this tenant's requests nor be woken by them.
        usable = [r for r in runners if pools is None or r.pool_id in pools]
        if not any(r.deployed for r in usable):
            self._draw_sleeper(model, pools, [_STATIC] if usable else [])
            return runners, None
        groups: dict[str, list[ConnectedRunner]] = {}
        for r in usable:
            owners = {dep for dep, _ in self._owners(r, model)}
            if not owners or self._static_serves(r, model):  # beside its replicas, maybe
                owners.add(_STATIC)
            for owner in owners:
                groups.setdefault(owner, []).append(r)
        live = {k: v for k, v in groups.items() if any(r.usable_link() is not None for r in v)}
        self._draw_sleeper(model, pools, list(live))
        if len(live) <= 1:
            only = next(iter(live), None)
            return runners, only or None
        keys = sorted(live)
        weights = [self._weights.get(k, 1.0) if k else 1.0 for k in keys]
        if sum(weights) <= 0:
            return runners, None
        drawn = random.choices(keys, weights)[0]  # noqa: S311 - a traffic split, not a secret
        return live[drawn], drawn or None

    def _draw_sleeper(self, model: str, pools: frozenset[str] | None, live: list[str]) -> None:
        """Draw among the live groups and the deployments of ``model`` asleep; a sleeper drawn
        starts waking (once; the wake is a database write, off the request's path)."""
        asleep = [
            dep
            for dep, pool in self._sleeping.get(model, ())
            if (pools is None or pool in pools) and dep not in self._waking
        ]
        if not asleep or not live:  # none up: the request itself wakes one and waits
            return
        sleepy = [max(self._weights.get(dep, 1.0), 0.0) for dep in asleep]
        awake = sum(self._weights.get(k, 1.0) if k else 1.0 for k in live)
        if sum(sleepy) <= 0 or random.random() * (awake + sum(sleepy)) >= sum(sleepy):  # noqa: S311
            return
        dep = random.choices(asleep, sleepy)[0]  # noqa: S311 - a traffic split, not a secret
        task = asyncio.get_running_loop().create_task(self.wake_for(model, pools, only=dep))
        self._waking[dep] = task
        task.add_done_callback(lambda t: self._woken(dep, t))

    def _woken(self, dep: str, task: asyncio.Task[bool]) -> None:
        self._waking.pop(dep, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("deployment %s: waking failed: %r", dep, task.exception())

    def served_name(
        self, runner: ConnectedRunner, model: str, deployment_id: str | None
    ) -> tuple[str, str | None]:
        """The name to ask ``runner`` for, for a request naming ``model``, and the deployment that
        serves it (None: a static model).

        The drawn deployment's replica if the runner holds one; else a static model of that
        name; else any of its replicas serving the name (a retry may go anywhere).
        """
        owners = self._owners(runner, model)
        mine = [o for o in owners if o[0] == deployment_id] or (
            [] if self._static_serves(runner, model) else owners
        )
        if mine:
            dep, rep = mine[0]
            return self._served.get(rep, model), dep
        static = self._static(runner, model) or runner.models
        info = next((m for m in static if m.name == model or model in m.aliases), None)
        return (info.name if info is not None else model), None

    def _static_serves(self, runner: ConnectedRunner, model: str) -> bool:
        return bool(self._static(runner, model))

    @staticmethod
    def _static(runner: ConnectedRunner, model: str) -> list[ModelInfo]:
        """The runner's own models (not a replica's) serving ``model``."""
        deployed = [id(m) for m in runner.deployed.values()]
        return [
            m
            for m in runner.models
            if id(m) not in deployed and (m.name == model or model in m.aliases)
        ]
