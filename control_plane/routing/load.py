"""What the router knows of runners beyond their hello: live load and observed speed.

Both are per control plane and in memory: rebuilt within seconds of a
restart, from status frames and from the next completed requests.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.control_plane.tunnel.link import RunnerLoad

__all__ = [
    "DEFAULT_DECODE_TPS",
    "PREFILL_OVER_DECODE",
    "ExternalLoad",
    "RunnerStats",
    "runner_status",
]

#: Decode speed assumed until a runner has been observed (tokens/s of one request).
DEFAULT_DECODE_TPS = 20.0
#: Prefill runs this much faster than decode, as ``services/cost.expected_cost`` assumes.
PREFILL_OVER_DECODE = 10.0
_MIN_TPS, _MAX_TPS = 0.1, 100_000.0  # a clock hiccup must not make a runner look free


def runner_status(runner: ConnectedRunner) -> RunnerLoad:
    """The runner's last status report (every link carries the runner-wide one; the freshest
    wins)."""
    links = runner.links
    if len(links) == 1:  # the common case, on the routing hot path (called per runner per request)
        return links[0].load
    return max((ln.load for ln in links), key=_updated_at, default=RunnerLoad())


def _updated_at(load: RunnerLoad) -> float:
    return load.updated_at


class ExternalLoad:
    """Requests a runner reports that this control plane did not send (other replicas').

    A runner's status frame is up to ~4 s old when read (the runner polls the
    engine's metrics every 2 s and reports every 2 s), so taking its
    ``running + waiting`` as the load overstates a runner whose requests just
    finished and understates one that just got new ones; routing on it herds
    requests. Instead our own part is always the exact, current in-flight
    count, and the report adds only its excess over the most we had in flight
    on that runner during the ``window_s`` before it arrived: what the report
    can only owe to others.
    Times are ``time.monotonic``, the clock of :class:`RunnerLoad`.
    """

    def __init__(self, window_s: float = 4.0, history: int = 512) -> None:
        self.window_s = window_s
        # runner id -> (when, in flight before, in flight after), one per change
        self._changes: dict[str, deque[tuple[float, int, int]]] = {}
        self._history = history
        # runner id -> (status, last change, in flight, answer): the answer changes only with
        # a status frame (see __call__), and routing asks for every runner on every request.
        self._answers: dict[str, tuple[RunnerLoad, tuple[float, int, int] | None, int, int]] = {}

    def note(self, runner: ConnectedRunner, before: int) -> None:
        changes = self._changes.setdefault(runner.runner_id, deque(maxlen=self._history))
        changes.append((time.monotonic(), before, runner.in_flight))

    def ours_during(self, runner: ConnectedRunner, start: float, end: float) -> int:
        """The most requests we had open on ``runner`` at any time in ``[start, end]``."""
        changes = self._changes.get(runner.runner_id)
        if not changes:
            return runner.in_flight
        at_start = changes[0][1]  # before the first change we know of
        most = 0
        for at, _, after in changes:
            if at <= start:
                at_start = after
            elif at <= end:
                most = max(most, after)
        return max(most, at_start)

    def __call__(self, runner: ConnectedRunner) -> int:
        if not runner.links:
            return 0
        st = runner_status(runner)
        changes = self._changes.get(runner.runner_id)
        last = (
            changes[-1] if changes else None
        )  # a new tuple per change: identity marks the history
        known = self._answers.get(runner.runner_id)
        # Every change of ours noted after the report came later than it, outside its window: the
        # answer stands until the next report (a scan of up to ``history`` changes per request
        # before). Only before our first change does it follow the in-flight count.
        if (
            known is not None
            and known[0] is st
            and (known[1] is not None or known[2] == runner.in_flight)
        ):
            return known[3]
        ours = self.ours_during(runner, st.updated_at - self.window_s, st.updated_at)
        answer = max(0, st.running + st.waiting - ours)
        self._answers[runner.runner_id] = (st, last, runner.in_flight, answer)
        return answer


@dataclass
class RunnerStats:
    """What this control plane has observed of one runner: its decode speed (moving average).

    Prefill speed is not learned: with prefix caching, a request's time to
    first token measures how much of its prompt the engine had cached, not how
    fast it prefills, and a runner that just had a cache hit would look ten
    times faster and draw every new request. Prefill is taken as
    ``PREFILL_OVER_DECODE`` x decode, as ``services/cost.expected_cost`` does.
    """

    decode_tps: float | None = None  # output tokens per second of one request
    observations: int = 0

    @property
    def prefill_tps(self) -> float:
        return (self.decode_tps or DEFAULT_DECODE_TPS) * PREFILL_OVER_DECODE

    def observe(
        self,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_s: float,
        total_s: float,
        queued: bool,
        streamed: bool,
        alpha: float,
    ) -> None:
        if streamed:
            # The first token comes after the wait and the prefill; the rest at decode speed.
            decode_s, decode_tokens = total_s - ttft_s, completion_tokens - 1
        elif not queued:
            # The whole answer arrives at once: take off the prefill we expect, the rest is decode.
            decode_s, decode_tokens = total_s - prompt_tokens / self.prefill_tps, completion_tokens
        else:
            return  # a queued, unstreamed answer mixes waiting, prefill and decode
        if decode_tokens > 0 and decode_s > 0:
            tps = min(max(decode_tokens / decode_s, _MIN_TPS), _MAX_TPS)
            self.decode_tps = _ewma(self.decode_tps, tps, alpha)
            self.observations += 1


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else (1 - alpha) * old + alpha * new
