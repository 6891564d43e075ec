"""The holder's side of a relayed request: this replica holds the runner's tunnel.

An ``open`` message becomes a stream on one of the runner's local links, and
every event of that stream goes back to the origin's inbox as it arrives:
nothing is buffered here. Credit is granted to the runner only when the
origin reports that its client consumed the data, so a slow client at the
origin slows only its own stream, as on a direct tunnel. A ``reset`` from the
origin (its client went away) resets the runner's stream, which makes the
runner abort the engine request.

A relay whose origin replica has died is reset too: the holder checks the
origin's liveness whenever its stream has been quiet for a heartbeat TTL.

An ``open`` that carries ``admit`` (tenant, weight, prompt estimate) first
waits in this replica's fair queue for the runner (for the engine serving its
``model`` on a runner with several), the one queue every
replica's requests for it share (docs/fairness.md): the holder answers
``admitted`` (with the queue wait) once the scheduler grants a slot, or
``refused`` with the error it would have answered its own client (429
``queue_full``, 503 ``queue_timeout``). A ``reset`` while queued cancels the
wait, which takes the request out of the queue; so does the origin's death
(its entry expired), checked every TTL while the request waits. The slot is freed, and the
tenant's counter charged with the engine's usage, when the relay ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from outpost.control_plane.errors import ApiError
from outpost.control_plane.openai.usage import clamp_usage
from outpost.control_plane.routing.admission import Admission, Slot
from outpost.control_plane.services.scheduler import RunnerGone
from outpost.control_plane.tunnel.hub import ConnectedRunner, TunnelHub
from outpost.control_plane.tunnel.link import Link
from outpost.control_plane.tunnel.stream import LinkClosed, Stream
from outpost.sdk.logfmt import REQUEST_ID, valid_request_id
from outpost.sdk.protocol import DataFrame, EndFrame, ResetFrame, Usage, encode_frame

__all__ = ["Holder"]

log = logging.getLogger("outpost.cluster")

Send = Callable[[str, str, str, "str | dict[str, Any]"], Awaitable[bool]]


@dataclass
class _Relay:
    origin: str
    task: asyncio.Task[None]
    link: Link | None = None
    stream: Stream | None = None
    reason: str = "origin reset the stream"
    stopped: bool = False  # the origin reset it: stop relaying, whatever the task is awaiting
    reset_sent: bool = False
    usage: Usage | None = None  # from the runner's end frame: charged to the tenant's counter here


@dataclass
class _RelayedCall:
    """What admission reads of a request another replica received (``AdmissionRequest``)."""

    request_id: str
    tenant_id: str
    api_key_id: str | None
    # The runner's name for the model (the ``open``'s ``model``): on a runner with several
    # engines it picks the engine's queue (docs/protocol.md "Engine slots").
    model: str | None = None
    # Returns when the origin replica has died: its client is gone, the request leaves the queue.
    client_gone: Callable[[], Awaitable[object]] | None = None


class Holder:
    def __init__(
        self,
        hub: TunnelHub,
        send: Send,
        is_alive: Callable[[str], bool],
        quiet_check_s: float,
        admission: Admission | None = None,
    ) -> None:
        self._hub = hub
        # This replica's fair queues: relayed requests that ask for it are admitted here.
        self.admission = admission
        self._send = send
        self._is_alive = is_alive
        self._quiet_check_s = quiet_check_s
        self._relays: dict[str, _Relay] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def active(self) -> int:
        return len(self._relays)

    def open(self, key: str, origin: str, request: dict[str, Any]) -> None:
        if key in self._relays:
            return  # a duplicate delivery: the first one is running
        task = asyncio.get_running_loop().create_task(self._relay(key, origin, request))
        self._relays[key] = _Relay(origin, task)

    def credit(self, key: str, n: int) -> None:
        relay = self._relays.get(key)
        if relay is not None and relay.stream is not None and n > 0:
            self._spawn(relay.stream.consumed(n))

    def reset(self, key: str, reason: str) -> None:
        relay = self._relays.get(key)
        if relay is not None:
            relay.reason = reason or relay.reason
            relay.stopped = True
            # Reset the runner's stream now rather than when the task notices: a cancellation
            # landing inside a Redis call can be absorbed by the client library.
            self._finish(relay)
            relay.task.cancel()

    async def close(self, grace_s: float) -> None:
        """Let live relays finish within ``grace_s`` (shutdown), then reset the rest."""
        tasks = [r.task for r in self._relays.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for key, relay in list(self._relays.items()):
                if relay.task in pending:
                    self.reset(key, "control plane replica shutting down")
            await asyncio.gather(*pending, return_exceptions=True)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- one relay ---------------------------------------------------------------

    async def _relay(self, key: str, origin: str, request: dict[str, Any]) -> None:
        relay = self._relays[key]
        request_id = (
            request.get("request_id") if valid_request_id(request.get("request_id")) else None
        )
        REQUEST_ID.set(request_id)  # this task's log lines carry the origin's request id
        try:
            runner = self._hub.runners.get(str(request.get("runner_id")))
            link = runner.usable_link() if runner is not None else None
            if runner is None or link is None:
                await self._lost(origin, key, "the runner is no longer connected to this replica")
                return
            slot = None
            admit = request.get("admit")
            if isinstance(admit, dict) and self.admission is not None:
                slot = await self._admit(key, origin, runner, request, admit, request_id)
                if slot is None:
                    return
                link = runner.usable_link()
                if link is None:
                    slot.finish_at_holder(None)
                    await self._lost(
                        origin, key, "the runner is no longer connected to this replica"
                    )
                    return
            try:
                await self._open_and_pump(key, relay, runner, link, request, request_id)
            finally:
                if slot is not None:
                    slot.finish_at_holder(_bounded(relay.usage, request, admit))
        finally:
            self._relays.pop(key, None)

    async def _admit(
        self,
        key: str,
        origin: str,
        runner: ConnectedRunner,
        request: dict[str, Any],
        admit: dict[str, Any],
        request_id: str | None,
    ) -> Slot | None:
        """Wait in the runner's fair queue here; tell the origin the outcome. None: refused or
        lost."""
        assert self.admission is not None
        call = _RelayedCall(
            request_id or key,
            str(admit.get("tenant_id", "")),
            str(admit["api_key_id"]) if admit.get("api_key_id") else None,
            model=str(model) if (model := request.get("model")) else None,
            client_gone=partial(self._origin_gone, origin),
        )
        try:
            slot = await self.admission.acquire(
                call,
                runner,
                prompt_tokens=int(admit.get("prompt_tokens") or 0),
                weight=float(admit.get("weight") or 1.0),
            )
        except RunnerGone:
            await self._lost(origin, key, "the runner disconnected while the request was queued")
            return None
        except ApiError as exc:
            await self._send(
                origin,
                "refused",
                key,
                {
                    "status": exc.status,
                    "message": exc.message,
                    "type": exc.type,
                    "code": exc.code,
                    "headers": exc.headers,
                },
            )
            return None
        try:
            delivered = await self._send(origin, "admitted", key, {"queue_s": slot.queue_wait_s})
        except BaseException:
            slot.finish_at_holder(None)
            raise
        if not delivered:
            slot.finish_at_holder(None)
            log.info("relay %s: origin replica %s has no inbox; not opening", key, origin)
            return None
        return slot

    async def _origin_gone(self, origin: str) -> None:
        """Return once the origin replica is dead (its registry entry expired); checked every TTL.

        Its client's ``reset`` covers a client that leaves; this covers the replica itself.
        """
        while self._is_alive(origin):
            await asyncio.sleep(self._quiet_check_s)

    async def _open_and_pump(
        self,
        key: str,
        relay: _Relay,
        runner: ConnectedRunner,
        link: Link,
        request: dict[str, Any],
        request_id: str | None,
    ) -> None:
        origin = relay.origin
        try:
            opening = asyncio.ensure_future(
                link.open_stream(
                    path=request["path"],
                    model=request["model"],
                    body=request["body"],
                    stream=bool(request["stream"]),
                    sealed=bool(request.get("sealed")),
                    window=int(request["window"]),
                    request_id=request_id,
                )
            )
            # A reset arriving mid-open must not strand a request the runner already received.
            st = await asyncio.shield(opening)
        except asyncio.CancelledError:
            relay.link = link
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                relay.stream = opening.result()
                self._finish(relay)
            elif not opening.done():

                def finish_late(f: asyncio.Future[Any]) -> None:
                    if not f.cancelled() and f.exception() is None:
                        self._finish(relay, f.result())

                opening.add_done_callback(finish_late)
            raise
        except (ConnectionError, KeyError, TypeError, ValueError) as exc:
            await self._lost(origin, key, f"could not open a stream: {exc}")
            return
        relay.link, relay.stream = link, st
        runner.in_flight += 1
        try:
            await self._pump(key, relay, st)
        except Exception:  # Redis failed mid-relay: the finally resets the runner's stream
            log.exception("relay %s to %s failed", key, origin)
        finally:
            runner.in_flight -= 1
            self._finish(relay)

    async def _pump(self, key: str, relay: _Relay, st: Stream) -> None:
        origin = relay.origin
        while not relay.stopped:
            try:
                ev = await st.next_event(self._quiet_check_s)
            except TimeoutError:
                if not self._is_alive(origin):
                    log.info(
                        "relay %s: origin replica %s is gone; resetting the runner's stream",
                        key,
                        origin,
                    )
                    return
                continue
            if isinstance(ev, LinkClosed):
                await self._lost(origin, key, ev.reason)
                return
            if isinstance(ev, EndFrame):
                relay.usage = ev.usage
            frame = DataFrame(stream_id=st.id, data=ev) if isinstance(ev, str) else ev
            if not await self._send(origin, "frame", key, encode_frame(frame)):
                log.info("relay %s: origin replica %s has no inbox; resetting", key, origin)
                return
            if isinstance(ev, EndFrame | ResetFrame):
                return

    def _finish(self, relay: _Relay, st: Stream | None = None) -> None:
        """Close the local stream; reset it on the runner (once) unless it ended there."""
        st = st or relay.stream
        if st is None or relay.link is None:
            return
        relay.link.close_stream(st)
        if not st.finished and not relay.reset_sent:
            relay.reset_sent = True
            self._spawn(st.cancel(relay.reason))  # the runner aborts the engine request

    async def _lost(self, origin: str, key: str, reason: str) -> None:
        try:
            await self._send(origin, "lost", key, {"reason": reason[:200]})
        except Exception:  # noqa: BLE001 - the origin also notices through its own checks
            log.warning("relay %s: could not tell %s that the stream was lost", key, origin)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _bounded(usage: Usage | None, request: dict[str, Any], admit: Any) -> Usage | None:
    """Runner output is untrusted: the same bounds as where the origin prices the request."""
    if usage is None:
        return None
    max_tokens = admit.get("max_tokens") if isinstance(admit, dict) else None
    return clamp_usage(
        usage,
        body_chars=len(str(request.get("body", ""))),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
    )
