"""A replica's state on the wire (replica.v1) and on the runner's console (rich).

A change of state goes out at once; download progress at most twice a second
per replica, so a fast download cannot flood the tunnel. Frames go to any open
connection that negotiated ``deployments``; with none open they are dropped,
and the manager re-sends every replica's latest state on the next connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from outpost.sdk.protocol import DeployFrame, ModelInfo, ReplicaFrame, ReplicaState

__all__ = ["PROGRESS_INTERVAL_S", "Replica", "Sender"]

log = logging.getLogger("outpost.runner.deployments")

#: Sends one frame on some open connection; False when none is open.
Sender = Callable[[ReplicaFrame], Awaitable[bool]]
#: At most this often a progress frame per replica (state changes go at once).
PROGRESS_INTERVAL_S = 0.5
#: A console that is no terminal gets a progress line per replica at most this often.
LINE_INTERVAL_S = 5.0
MIB = 1024 * 1024


@dataclass
class Replica:
    """One replica's live state; written by the manager and, for bytes, by a download thread."""

    order: DeployFrame
    state: ReplicaState = "pending"
    bytes_done: int = 0
    bytes_total: int | None = None
    rate_bps: float = 0.0
    reason: str | None = None
    model: ModelInfo | None = None
    _sent_at: float = 0.0
    _sample: tuple[float, int] = (0.0, 0)

    @property
    def replica_id(self) -> str:
        return self.order.replica_id

    def frame(self) -> ReplicaFrame:
        total = self.bytes_total
        done = min(self.bytes_done, total) if total is not None else self.bytes_done
        return ReplicaFrame(
            replica_id=self.replica_id,
            state=self.state,
            bytes_done=done,
            bytes_total=total,
            rate_bps=round(self.rate_bps, 1),
            reason=self.reason[:512] if self.reason else None,
            model=self.model if self.state == "ready" else None,
        )

    def on_bytes(self, done: int, total: int | None) -> None:
        # Called from a download (possibly a hub thread): plain attribute writes only.
        self.bytes_done, self.bytes_total = done, total

    def sample_rate(self, now: float) -> None:
        """Bytes per second since the last sample, smoothed so one slow read does not show as 0."""
        then, before = self._sample
        if then and now > then:
            current = max(0.0, (self.bytes_done - before) / (now - then))
            self.rate_bps = current if not self.rate_bps else 0.5 * self.rate_bps + 0.5 * current
        self._sample = (now, self.bytes_done)


class ReplicaConsole:
    """Download bars on the runner's console while any replica downloads; where the console is
    no terminal (a service's log, JSON logs), a line every few seconds instead."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._clock = clock
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._printed: dict[str, float] = {}

    def update(self, replica: Replica) -> None:
        rid = replica.replica_id
        if replica.state != "downloading":
            self._finish(rid)
            self._printed.pop(rid, None)
            return
        if not self._console.is_terminal:
            self._line(replica)
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                # Redrawn on each update (the manager's ticker, 4 a second): no thread of its own.
                auto_refresh=False,
            )
            self._progress.start()
        if rid not in self._tasks:
            self._tasks[rid] = self._progress.add_task(
                f"{replica.order.name} ({rid})", total=replica.bytes_total
            )
        self._progress.update(
            self._tasks[rid], completed=replica.bytes_done, total=replica.bytes_total
        )
        self._progress.refresh()

    def _line(self, replica: Replica) -> None:
        now = self._clock()
        if now - self._printed.get(replica.replica_id, -LINE_INTERVAL_S) < LINE_INTERVAL_S:
            return
        self._printed[replica.replica_id] = now
        done, total, rate = replica.bytes_done, replica.bytes_total, replica.rate_bps
        of = f" of {total / MIB:.1f} MiB" if total else ""
        left = f", {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
        self._console.print(
            f"downloading {replica.order.name} ({replica.replica_id}): {done / MIB:.1f} MiB{of}, "
            f"{rate / MIB:.1f} MiB/s{left}",
            highlight=False,
        )

    def _finish(self, rid: str) -> None:
        task = self._tasks.pop(rid, None)
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)
        if not self._tasks and self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        for rid in list(self._tasks):
            self._finish(rid)


class Reporter:
    """Sends replica frames: at once on a state change, throttled for progress."""

    def __init__(
        self, send: Sender, console: Console, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._send = send
        self.console = ReplicaConsole(console, clock)
        self._clock = clock

    async def state(self, replica: Replica, state: ReplicaState, reason: str | None = None) -> None:
        replica.state, replica.reason = state, reason
        if state != "downloading":
            replica.rate_bps = 0.0
        # The reason may hold what a remote server or file said: repr() escapes it for the log.
        log.info(
            "replica %s (%s): %s%s",
            replica.replica_id,
            replica.order.name,
            state,
            f": {reason!r}" if reason else "",
        )
        self.console.update(replica)
        await self.send(replica)

    async def progress(self, replica: Replica) -> None:
        now = self._clock()
        replica.sample_rate(now)
        self.console.update(replica)
        if now - replica._sent_at >= PROGRESS_INTERVAL_S:
            await self.send(replica)

    async def send(self, replica: Replica) -> None:
        replica._sent_at = self._clock()
        await self._send(replica.frame())
