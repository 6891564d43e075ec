"""Which replica holds which runner: entries in Redis with a TTL, and the view built from them.

Every replica writes one entry, ``<prefix>:replica:<id>``, each heartbeat:
the runners whose tunnels it holds (models, capacity, labels, cost, the
freshest status frame, its own in-flight count) with a TTL of
``cluster_replica_ttl_s``. A replica whose entry expired is dead. A sorted
set indexes the entries so a reader needs no ``SCAN``.

The view (:meth:`RemoteView.apply`) turns the other replicas' entries into
:class:`~control_plane.tunnel.hub.ConnectedRunner` objects in
``hub.remote``, one :class:`~control_plane.cluster.remote.RemoteLink` per
replica that holds the runner. Objects are updated in place, never
replaced, because requests in flight hold them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from outpost.control_plane.cluster.bus import Keys
from outpost.control_plane.cluster.remote import RemoteLink
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import RunnerLoad
from outpost.sdk.pricing import CostModel
from outpost.sdk.protocol import EngineSlots, ModelInfo

__all__ = ["Registry", "RemoteView", "describe_runners"]

# Index entries older than this are swept; liveness itself is the entry's TTL.
_INDEX_SWEEP_S = 300.0


def describe_runners(runners: Iterable[ConnectedRunner], now: float) -> list[dict[str, Any]]:
    """What other replicas need to route to the runners this replica holds."""
    out = []
    for r in runners:
        status = max(
            (ln.load for ln in r.links), key=lambda ld: ld.updated_at, default=RunnerLoad()
        )
        out.append(
            {
                "runner_id": r.runner_id,
                "tenant_id": r.tenant_id,
                "name": r.name,
                "pool_id": r.pool_id,
                "models": [m.model_dump(mode="json") for m in r.models],
                "capacity": r.capacity,
                "labels": r.labels,
                "cost": r.cost.to_dict(),
                "hardware": r.hardware,
                "in_flight": r.in_flight,
                "draining": r.usable_link() is None,
                "load": {
                    "running": status.running,
                    "waiting": status.waiting,
                    "kv_cache_usage": status.kv_cache_usage,
                    "healthy": status.healthy,
                    "completed": status.completed,
                    "age_s": max(now - status.updated_at, 0.0),
                    "unavailable_models": list(status.unavailable_models),
                    "headroom": status.headroom,
                    "engines": [e.model_dump(mode="json") for e in status.engines],
                },
            }
        )
    return out


class Registry:
    """Reads and writes replica entries."""

    def __init__(
        self, redis: Redis, keys: Keys, ttl_s: float, wall: Callable[[], float] = time.time
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._wall = wall

    async def publish(self, replica_id: str, runners: list[dict[str, Any]]) -> None:
        entry = json.dumps({"replica_id": replica_id, "runners": runners}, separators=(",", ":"))
        now = self._wall()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.replica(replica_id), entry, px=max(int(self.ttl_s * 1000), 1))
            pipe.zadd(self.keys.replicas, {replica_id: now + self.ttl_s})
            pipe.zremrangebyscore(self.keys.replicas, "-inf", now - _INDEX_SWEEP_S)
            await pipe.execute()

    async def withdraw(self, replica_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.replica(replica_id))
            pipe.zrem(self.keys.replicas, replica_id)
            await pipe.execute()

    async def read(self) -> dict[str, list[dict[str, Any]]]:
        """Live replicas (this one included) and the runners each holds."""
        ids = [
            _text(i)
            for i in await self.redis.zrangebyscore(
                self.keys.replicas, self._wall() - _INDEX_SWEEP_S, "+inf"
            )
        ]
        if not ids:
            return {}
        entries = await self.redis.mget([self.keys.replica(i) for i in ids])
        live: dict[str, list[dict[str, Any]]] = {}
        for replica_id, raw in zip(ids, entries, strict=True):
            if raw is None:
                continue  # expired: that replica is dead
            try:
                live[replica_id] = list(json.loads(raw)["runners"])
            except (ValueError, KeyError, TypeError):
                continue
        return live


class RemoteView:
    """Keeps ``hub.remote`` equal to what the other replicas published."""

    def __init__(
        self,
        hub: TunnelHub,
        replica_id: str,
        make_link: Callable[[str, str], RemoteLink],
        on_runner: Callable[[ConnectedRunner, bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub = hub
        self.replica_id = replica_id
        self._make_link = make_link
        self._on_runner = on_runner  # admission capacity, for runners held only elsewhere
        self._clock = clock
        self.live: set[str] = {replica_id}

    def apply(self, replicas: dict[str, list[dict[str, Any]]]) -> bool:
        """Bring ``hub.remote`` up to date; True when the set of routable runners changed."""
        now = self._clock()
        self.live = set(replicas) | {self.replica_id}
        held: dict[str, dict[str, dict[str, Any]]] = {}  # runner id -> replica id -> entry
        for replica_id, runners in replicas.items():
            if replica_id == self.replica_id:
                continue
            for info in runners:
                if isinstance(info, dict) and isinstance(info.get("runner_id"), str):
                    held.setdefault(info["runner_id"], {})[replica_id] = info
        changed = False
        for runner_id, holders in held.items():
            try:
                changed |= self._update(runner_id, holders, now)
            except (ValueError, KeyError, TypeError):
                continue  # a malformed entry (another version?) must not stop the view
        for runner_id in [k for k in self.hub.remote if k not in held]:
            self._drop(runner_id, "no replica holds the runner any more")
            changed = True
        for runner in self.hub.remote.values():
            if runner.runner_id not in self.hub.runners:
                self._on_runner(runner, True)  # idempotent: keeps admission's capacity current
        return changed

    def clear(self, reason: str) -> bool:
        """Forget every remote runner (Redis unreachable for longer than the TTL)."""
        gone = list(self.hub.remote)
        for runner_id in gone:
            self._drop(runner_id, reason)
        self.live = {self.replica_id}
        return bool(gone)

    def _update(self, runner_id: str, holders: dict[str, dict[str, Any]], now: float) -> bool:
        first = holders[min(holders)]
        models = [ModelInfo.model_validate(m) for m in first["models"]]
        runner = self.hub.remote.get(runner_id)
        changed = False
        if runner is None:
            runner = ConnectedRunner(
                runner_id=runner_id,
                tenant_id=str(first["tenant_id"]),
                name=str(first["name"]),
                models=models,
                capacity=int(first["capacity"]),
            )
            self.hub.remote[runner_id] = runner
            changed = True
        elif runner.models != models:
            changed = True
        runner.models, runner.capacity = models, int(first["capacity"])
        runner.labels, runner.cost = (
            dict(first.get("labels") or {}),
            CostModel.from_mapping(first.get("cost")),
        )
        runner.hardware = dict(first.get("hardware") or {})
        # An entry without a pool (an older replica) puts the runner in none: routed to nobody.
        runner.pool_id = str(first.get("pool_id") or "")
        # A remote runner's links are the RemoteLinks made here (``_make_link``); the test narrows
        # ConnectedRunner[RunnerLink] to them, it filters nothing out.
        links = {ln.replica_id: ln for ln in runner.links if isinstance(ln, RemoteLink)}
        for replica_id, info in holders.items():
            link = links.get(replica_id)
            if link is None:
                link = self._make_link(replica_id, runner_id)
                runner.links.append(link)
                changed = True
            load = info.get("load") or {}
            was_draining, link.draining = link.draining, bool(info.get("draining"))
            changed |= was_draining != link.draining
            link.load = RunnerLoad(
                running=int(load.get("running", 0)),
                waiting=int(load.get("waiting", 0)),
                kv_cache_usage=load.get("kv_cache_usage"),
                healthy=bool(load.get("healthy", True)),
                completed=int(load.get("completed", 0)),
                unavailable_models=tuple(load.get("unavailable_models") or ()),
                headroom=int(load.get("headroom", 0)),
                engines=tuple(EngineSlots.model_validate(e) for e in load.get("engines") or ()),
                updated_at=now - float(load.get("age_s", 0.0)),
            )
        for replica_id, link in links.items():
            if replica_id not in holders:
                link.fail_all(f"replica {replica_id} no longer holds runner {runner_id}")
                runner.links.remove(link)
                changed = True
        return changed

    def _drop(self, runner_id: str, reason: str) -> None:
        runner = self.hub.remote.pop(runner_id)
        for link in list(runner.links):
            link.fail_all(reason)
        runner.links.clear()
        if runner_id not in self.hub.runners:
            self._on_runner(runner, False)


def _text(value: object) -> str:
    # redis-py types zrangebyscore's items for withscores too (tuples); without it they are
    # bytes, or str on a client made with decode_responses.
    return value.decode() if isinstance(value, bytes) else str(value)
