"""One control-plane replica's membership in a cluster sharing Redis.

:class:`Cluster` runs two loops beside the app:

* the **heartbeat**: publish the runners this replica holds, read the other
  replicas' entries into ``hub.remote`` (see ``registry.py``), keep the inbox
  alive. A local runner connecting or leaving triggers it at once and tells
  the other replicas to re-read, so they learn within a round trip rather
  than a heartbeat;
* the **inbox reader**: one blocking ``XREAD`` that dispatches ``open``,
  ``credit`` and ``reset`` to the :class:`~control_plane.cluster.holder.Holder`
  and ``admitted``, ``refused``, ``frame`` and ``lost`` to the origin's
  :class:`~control_plane.cluster.remote.RemoteStream` objects.

The request path meets none of this: ``serving.py`` routes over
``hub.routable()``, in which runners of other replicas appear with
:class:`~control_plane.cluster.remote.RemoteLink` links.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from outpost.control_plane.cluster.bus import Bus, Keys, Message
from outpost.control_plane.cluster.holder import Holder
from outpost.control_plane.cluster.ratelimit import RedisRateLimiter
from outpost.control_plane.cluster.registry import Registry, RemoteView, describe_runners
from outpost.control_plane.cluster.remote import RemoteLink, RemoteStream
from outpost.control_plane.errors import ApiError
from outpost.control_plane.routing.admission import Admission
from outpost.control_plane.settings import Settings
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.sdk.protocol import (
    CloseCode,
    DataFrame,
    EndFrame,
    FrameError,
    ResetFrame,
    ResponseStartFrame,
    parse_frame,
)

__all__ = ["Cluster", "new_replica_id"]

log = logging.getLogger("outpost.cluster")


def new_replica_id() -> str:
    """Unique per process: a restarted replica is a new one, and its old inbox simply expires."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40] or "cp"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster:
    def __init__(
        self,
        redis: Redis,
        hub: TunnelHub,
        *,
        prefix: str = "outpost",
        heartbeat_s: float = 1.0,
        ttl_s: float = 5.0,
        stream_window: int = 256 * 1024,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        admission: Admission | None = None,
    ) -> None:
        self.redis = redis
        self.hub = hub
        self.replica_id = replica_id or new_replica_id()
        self.keys = Keys(prefix)
        self.heartbeat_s = heartbeat_s
        self.ttl_s = max(ttl_s, 2 * heartbeat_s)  # two missed beats before a replica counts as dead
        self._clock = clock
        self.bus = Bus(redis, self.keys, self.replica_id, self.ttl_s)
        self.registry = Registry(redis, self.keys, self.ttl_s)
        self.view = RemoteView(
            hub, self.replica_id, self._make_link, self._capacity_listeners, clock=clock
        )
        # With admission, the runners this replica holds are admitted here for every replica
        # (holder.py).
        self.holder = Holder(
            hub, self.bus.send, self.is_alive, quiet_check_s=self.ttl_s, admission=admission
        )
        self.rate_limiter = RedisRateLimiter(redis, self.keys)
        self._stream_window = stream_window
        self._streams: dict[str, RemoteStream] = {}  # relayed requests this replica originated
        self._wake = asyncio.Event()
        self._announce = False  # the local runner set changed: tell the others after publishing
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_view_ok = clock()
        # Told when another replica changed API keys or tenants (services/auth_cache.py drops them).
        self.key_listeners: list[Callable[[list[str], list[str]], None]] = []

    @classmethod
    def from_settings(
        cls, settings: Settings, hub: TunnelHub, admission: Admission | None = None
    ) -> Cluster:
        redis = Redis.from_url(
            settings.redis_url, health_check_interval=30, socket_connect_timeout=5
        )
        return cls(
            redis,
            hub,
            prefix=settings.cluster_key_prefix,
            heartbeat_s=settings.cluster_heartbeat_s,
            ttl_s=settings.cluster_replica_ttl_s,
            stream_window=settings.tunnel_stream_window,
            admission=admission,
        )

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.redis.ping()  # fail fast: a replica that cannot reach Redis is misconfigured
        await self.bus.open()
        self.hub.listeners.append(self._local_changed)
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"),
            asyncio.create_task(self._inbox_loop(), name="cluster-inbox"),
        ]
        log.info(
            "replica %s joined the cluster (prefix %s, %d other replica(s))",
            self.replica_id,
            self.keys.prefix,
            len(self.view.live) - 1,
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Leave: stop advertising runners, let relays in progress finish briefly, then go."""
        if self._local_changed in self.hub.listeners:
            self.hub.listeners.remove(self._local_changed)
        try:
            await self.registry.withdraw(self.replica_id)
            await self._tell_others("changed")
        except RedisError:
            pass
        await self.holder.close(grace_s)
        # redis-py may turn a cancellation inside a blocking read into a connection error,
        # which the loops would retry: they also check this flag.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=5)
        for st in list(self._streams.values()):
            st.link_closed("control plane replica shutting down")
        try:
            await self.bus.close()
        except RedisError:
            pass
        await self.redis.aclose()

    # --- queries -------------------------------------------------------------------------

    def is_alive(self, replica_id: str) -> bool:
        return replica_id in self.view.live

    async def disconnect_everywhere(self, runner_id: str, code: CloseCode, reason: str) -> None:
        """Close a runner's links on every other replica too (revocation)."""
        await self._tell_others(
            "disconnect", {"runner_id": runner_id, "code": int(code), "reason": reason[:120]}
        )

    async def keys_changed_everywhere(
        self, key_ids: Iterable[str], tenant_ids: Iterable[str]
    ) -> None:
        """Tell every other replica to forget these API keys (and these tenants' keys) it has
        cached."""
        await self._tell_others("keys", {"keys": sorted(key_ids), "tenants": sorted(tenant_ids)})

    # --- heartbeat ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                log.warning("cluster heartbeat failed: %s", exc)
                if self._clock() - self._last_view_ok > self.ttl_s and self.view.clear(
                    "Redis unreachable"
                ):
                    self.hub.notify()
            except Exception:  # the loop must outlive one bad round
                log.exception("cluster heartbeat failed")

    async def _beat(self) -> None:
        announce, self._announce = self._announce, False
        await self.registry.publish(
            self.replica_id, describe_runners(self.hub.runners.values(), self._clock())
        )
        await self.bus.keep_alive()
        replicas = await self.registry.read()
        self._last_view_ok = self._clock()
        if self.view.apply(replicas):
            self.hub.notify()
        if announce:
            await self._tell_others("changed")

    async def _tell_others(self, kind: str, payload: dict[str, Any] | None = None) -> None:
        for replica_id in sorted(self.view.live - {self.replica_id}):
            await self.bus.send(replica_id, kind, "", payload or {})

    def _local_changed(self, runner: ConnectedRunner, connected: bool) -> None:
        """Hub listener: publish at once, and keep a runner still held elsewhere admissible."""
        self._announce = True
        self._wake.set()
        remote = self.hub.remote.get(runner.runner_id)
        if not connected and remote is not None:
            # The hub just made admission forget this runner; other replicas still hold it.
            self._capacity_listeners(remote, True)

    def _capacity_listeners(self, runner: ConnectedRunner, connected: bool) -> None:
        for listener in list(self.hub.listeners):
            if listener != self._local_changed:
                listener(runner, connected)

    # --- inbox ----------------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        while not self._stopping:
            try:
                messages = await self.bus.receive(self.heartbeat_s)
            except (RedisError, OSError) as exc:
                # stop() sets it while the read waits; mypy keeps the loop condition's narrowing.
                if self._stopping:
                    return  # type: ignore[unreachable]
                log.warning("cluster inbox read failed: %s", exc)
                await asyncio.sleep(min(self.heartbeat_s, 1.0))
                continue
            for msg in messages:
                try:
                    await self._dispatch(msg)
                except Exception:  # one bad message must not stop the inbox
                    log.exception("cluster message %s for %s failed", msg.kind, msg.request)

    async def _dispatch(self, msg: Message) -> None:
        if msg.kind in _ORIGIN_KINDS:
            self._to_origin_stream(msg)
        elif msg.kind == "open":
            body = msg.json()
            self.holder.open(msg.request, str(body.pop("origin", "")), body)
        elif msg.kind == "credit":
            self.holder.credit(msg.request, int(msg.json().get("n", 0)))
        elif msg.kind == "reset":
            self.holder.reset(msg.request, str(msg.json().get("reason", "")))
        elif msg.kind == "changed":
            self._wake.set()
        elif msg.kind == "keys":
            body = msg.json()
            keys, tenants = (
                [str(k) for k in body.get("keys", [])],
                [str(t) for t in body.get("tenants", [])],
            )
            for listener in list(self.key_listeners):
                listener(keys, tenants)
        elif msg.kind == "disconnect":
            body = msg.json()
            await self.hub.disconnect(
                str(body["runner_id"]), CloseCode(int(body["code"])), str(body["reason"])
            )

    def _to_origin_stream(self, msg: Message) -> None:
        """A message about a stream this replica relays for its own client (it is the origin)."""
        st = self._streams.get(msg.request)
        if st is None:
            return
        if msg.kind == "frame":
            try:
                frame = parse_frame(msg.payload)
            except FrameError as exc:
                st.link_closed(f"bad relayed frame: {exc}")
                return
            if isinstance(frame, ResponseStartFrame | DataFrame | EndFrame | ResetFrame):
                st.deliver(frame)
        elif msg.kind == "admitted":
            st.admitted(float(msg.json().get("queue_s", 0.0)))
        elif msg.kind == "refused":
            st.refused(_refusal(msg.json()))
        elif msg.kind == "lost":
            st.link_closed(str(msg.json().get("reason", "stream lost on the holding replica")))

    # --- origin side ----------------------------------------------------------------------

    def _make_link(self, replica_id: str, runner_id: str) -> RemoteLink:
        return RemoteLink(
            replica_id, runner_id, self._send_as_origin, self._register, self._stream_window
        )

    async def _send_as_origin(
        self, to: str, kind: str, request: str, payload: str | dict[str, Any]
    ) -> bool:
        if kind == "open" and isinstance(payload, dict):
            payload = {**payload, "origin": self.replica_id}
        return await self.bus.send(to, kind, request, payload)

    def _register(self, stream: RemoteStream | None, key: str) -> None:
        if stream is None:
            self._streams.pop(key, None)
        else:
            self._streams[key] = stream


#: What a holding replica tells the origin about one of its streams.
_ORIGIN_KINDS = frozenset({"frame", "admitted", "refused", "lost"})


def _refusal(body: dict[str, Any]) -> ApiError:
    """The holder's refusal (its status, envelope fields and headers) as the origin answers it."""
    raw = body.get("headers")
    headers: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return ApiError(
        int(body.get("status", 503)),
        str(body.get("message", "refused")),
        type=str(body.get("type", "server_error")),
        code=str(body["code"]) if body.get("code") else None,
        headers={str(k): str(v) for k, v in headers.items()},
    )
