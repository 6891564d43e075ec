"""Fair admission of requests to runners.

Every runner advertises a *capacity*: how many requests it runs at once. The
control plane keeps one queue per runner and admits at most ``capacity``
requests to it; the rest wait here, where we can choose *who* goes next.
Waiting in the control plane rather than in the engine is what makes fairness
possible: once a request reaches the engine's own queue it is served
first-come-first-served with everything else there.

Who goes next is decided by the Virtual Token Counter (VTC; Sheng et al.,
"Fairness in Serving Large Language Models", OSDI 2024):

* Each tenant has a counter per runner: the weighted service it has received,
  ``(input tokens x 1 + output tokens x 2) / weight``. Output tokens cost
  twice as much because decoding, token by token, is the expensive phase.
* When a slot frees, the backlogged tenant (one with a request waiting) with
  the smallest counter is dispatched; ties go to the earliest arrival.
* Its counter is charged the estimated prompt tokens at dispatch, corrected
  when the real count is known, and output tokens as they are produced
  (:meth:`FairScheduler.charge`).
* A tenant that becomes backlogged after being idle has its counter lifted to
  the smallest counter among the backlogged tenants, or, when none is
  backlogged, to the counter of the tenant dispatched last (the paper's "last
  client to leave the queue"); it keeps its own counter when that is higher.
  Without the lift an idle tenant would bank credit and, on return, starve
  everyone until its counter caught up; with it no tenant can claim service
  for time it did not ask for.
* A request that leaves the queue without being served (its client went
  away, :meth:`FairScheduler.acquire`'s ``gone``; its timeout; cancellation)
  is never dispatched and charges nothing. When it was the one that made its
  tenant backlogged and the tenant's backlog ends with it, the lift it caused
  is taken back too: the counter is what it would be had the request never
  arrived.

The paper proves that, over any interval, two continuously backlogged tenants'
weighted service differs by a bounded amount, independent of the interval.
Counters are per runner: each runner is its own server, and the router decides
which runner a request queues for.

*Fair headroom* (VTC only). Without preemption, a tenant that was idle
still waits for a running request to finish before its first one starts, however
small its counter. A runner may advertise ``headroom`` engine slots beyond its
``capacity`` (the runner starts its engine with that many more slots;
docs/fairness.md): such a slot is granted only to a tenant with nothing in
flight on the runner whose counter is at the backlogged minimum, i.e. the tenant
VTC would dispatch next anyway. A tenant keeping the runner busy always has
requests in flight, so it never gets a headroom slot and its own share of the
regular slots is unchanged; the light tenant's request starts at once, batched
with the others, instead of waiting for a slot to free.

``policy="fcfs"`` keeps the same queues and admission but dispatches in
arrival order: the baseline the benchmarks compare against. It has no tenant
to keep a slot free for, so a runner's headroom slots are plain slots under
FCFS: both policies drive the same engine with the same slots, and a
throughput comparison between them is like for like. Counters are kept under
both policies so metrics are comparable.

Everything runs on the event loop (no threads, no locks): state changes
happen between ``await`` points. ``clock`` stamps tickets; ``timeout`` uses
the event loop's own timer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

__all__ = [
    "INPUT_TOKEN_WEIGHT",
    "OUTPUT_TOKEN_WEIGHT",
    "Abandoned",
    "FairScheduler",
    "Policy",
    "QueueFull",
    "QueueTimeout",
    "RunnerGone",
    "RunnerSnapshot",
    "SchedulerError",
    "SchedulerSnapshot",
    "Ticket",
    "weighted_tokens",
]

INPUT_TOKEN_WEIGHT = 1.0
OUTPUT_TOKEN_WEIGHT = 2.0

Policy = Literal["vtc", "fcfs"]


def weighted_tokens(prompt_tokens: float, completion_tokens: float) -> float:
    """VTC's unweighted service for a request: input x 1 + output x 2."""
    return INPUT_TOKEN_WEIGHT * prompt_tokens + OUTPUT_TOKEN_WEIGHT * completion_tokens


class SchedulerError(Exception):
    """Base of the errors :meth:`FairScheduler.acquire` raises."""

    def __init__(self, message: str, runner_id: str, tenant_id: str) -> None:
        super().__init__(message)
        self.runner_id = runner_id
        self.tenant_id = tenant_id


class QueueFull(SchedulerError):
    """The runner's queue (``scope="runner"``) or the tenant's part of it is full."""

    def __init__(self, runner_id: str, tenant_id: str, scope: Literal["runner", "tenant"]) -> None:
        super().__init__(f"queue for runner {runner_id!r} is full ({scope})", runner_id, tenant_id)
        self.scope = scope


class QueueTimeout(SchedulerError):
    """The request waited its whole timeout without being admitted."""


class RunnerGone(SchedulerError):
    """The runner was forgotten (disconnected) while the request waited."""


class Abandoned(SchedulerError):
    """The caller's ``gone`` signal fired while the request waited: it left the queue unserved."""


@dataclass(eq=False)
class Ticket:
    """An admitted request: hold it while the runner works, then release it."""

    id: int
    runner_id: str
    tenant_id: str
    weight: float
    prompt_tokens_estimate: int
    enqueued_at: float
    dispatched_at: float = 0.0
    #: Holds one of the runner's headroom slots rather than a regular one.
    headroom: bool = False
    prompt_tokens_charged: int = 0
    completion_tokens_charged: int = 0
    released: bool = False
    _runner: _RunnerState | None = field(default=None, repr=False)

    @property
    def queue_wait_s(self) -> float:
        return self.dispatched_at - self.enqueued_at


@dataclass(eq=False)
class _Waiter:
    seq: int
    ticket: Ticket
    future: asyncio.Future[Ticket]


@dataclass(eq=False)
class _RunnerState:
    capacity: int
    headroom: int = 0
    in_flight: set[Ticket] = field(default_factory=set)
    headroom_in_flight: int = 0
    # Tickets in flight per tenant: headroom goes only to tenants with none.
    tenant_in_flight: Counter[str] = field(default_factory=Counter)
    # Only backlogged tenants have an entry: an empty deque is deleted at once,
    # so ``tenant in queues`` means "backlogged" for the lift rule.
    queues: dict[str, deque[_Waiter]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    # Per backlogged tenant: how much the lift that started its backlog added,
    # and whether the counter existed before; dropped once one of its requests
    # is dispatched (the lift was used), taken back if the backlog ends unserved.
    lifts: dict[str, tuple[float, bool]] = field(default_factory=dict)
    last_dispatched: str | None = None
    abandoned: int = 0  # requests that left the queue unserved (gone, timeout, cancelled)

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def regular_free(self, extra: int = 0) -> bool:
        return len(self.in_flight) - self.headroom_in_flight < self.capacity + extra


class RunnerSnapshot(TypedDict):
    capacity: int
    headroom: int
    in_flight: int
    in_headroom: int
    queued: int
    abandoned: int
    in_flight_by_tenant: dict[str, int]
    queued_by_tenant: dict[str, int]
    counters: dict[str, float]


class SchedulerSnapshot(TypedDict):
    policy: Policy
    runners: dict[str, RunnerSnapshot]


def _granted(future: asyncio.Future[Ticket]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


class FairScheduler:
    """Per-runner admission control with VTC (or FCFS) dispatch between tenants.

    ``max_queue_per_runner`` bounds the waiters of one runner;
    ``max_queue_per_tenant`` (optional) bounds one tenant's waiters on one
    runner, so a single tenant cannot fill the queue and turn everyone else's
    arrivals into rejections. Runners not yet given a capacity get
    ``default_capacity``.
    """

    def __init__(
        self,
        *,
        policy: Policy = "vtc",
        max_queue_per_runner: int = 256,
        max_queue_per_tenant: int | None = None,
        default_capacity: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in ("vtc", "fcfs"):
            raise ValueError(f"unknown policy {policy!r}")
        if min(max_queue_per_runner, default_capacity, max_queue_per_tenant or 0) < 0:
            raise ValueError("queue bounds and capacity must be >= 0")
        self._policy: Policy = policy
        self._max_queue = max_queue_per_runner
        self._max_queue_tenant = max_queue_per_tenant
        self._default_capacity = default_capacity
        self._clock = clock
        self._runners: dict[str, _RunnerState] = {}
        self._ids = itertools.count(1)

    @property
    def policy(self) -> Policy:
        return self._policy

    def clock(self) -> float:
        """The clock tickets are stamped with."""
        return self._clock()

    def set_capacity(self, runner_id: str, capacity: int, headroom: int | None = None) -> None:
        """Set how many requests may run at once; takes effect immediately.

        ``headroom`` (left as it is when ``None``) is how many more the engine
        can take for tenants with nothing in flight (VTC only; see the module
        docstring). Lowering either never interrupts running requests: new
        ones wait until enough have been released.
        """
        if capacity < 0 or (headroom is not None and headroom < 0):
            raise ValueError("capacity and headroom must be >= 0")
        state = self._state(runner_id)
        state.capacity = capacity
        if headroom is not None:
            state.headroom = headroom
        self._pump(state)

    def forget_runner(self, runner_id: str) -> None:
        """Drop a runner: its waiters fail with :class:`RunnerGone`.

        Tickets already admitted stay valid to charge and release, but no
        longer count against a runner of the same id that reconnects.
        """
        state = self._runners.pop(runner_id, None)
        if state is None:
            return
        waiters = [w for q in state.queues.values() for w in q]
        state.queues.clear()
        message = f"runner {runner_id!r} is gone"
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(RunnerGone(message, runner_id, waiter.ticket.tenant_id))

    async def acquire(
        self,
        runner_id: str,
        tenant_id: str,
        prompt_tokens_estimate: int,
        *,
        weight: float = 1.0,
        timeout: float | None = None,
        gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Ticket:
        """Wait for a slot on ``runner_id`` in the fair queue and return its ticket.

        Raises :class:`QueueFull` at once when the request would have to wait
        and there is no room, :class:`QueueTimeout` after ``timeout`` seconds,
        :class:`RunnerGone` if the runner is forgotten meanwhile, and
        :class:`Abandoned` if the awaitable ``gone()`` returns (the client
        disconnected) first; ``gone`` is only called when the request has to
        wait. Cancelling the caller removes the request from the queue, or
        gives back the slot if it had just been granted.
        """
        if weight <= 0 or prompt_tokens_estimate < 0:
            raise ValueError("weight must be > 0 and prompt_tokens_estimate >= 0")
        state = self._state(runner_id)
        ticket = Ticket(
            next(self._ids), runner_id, tenant_id, weight, prompt_tokens_estimate, self._clock()
        )
        # _pump keeps "nobody waits while a slot is free", so a free slot means
        # this request jumps no one.
        if self._regular_free(state):
            self._lift(state, tenant_id)
            self._dispatch(state, ticket)
            return ticket
        if self._headroom_for(state, tenant_id):
            # VTC would pick this tenant next (nothing in flight, lowest
            # counter): instead of waiting for a slot it starts at once.
            self._lift(state, tenant_id)
            self._dispatch(state, ticket, headroom=True)
            return ticket
        if state.queued() >= self._max_queue:
            raise QueueFull(runner_id, tenant_id, "runner")
        own = state.queues.get(tenant_id)
        if self._max_queue_tenant is not None and len(own or ()) >= self._max_queue_tenant:
            raise QueueFull(runner_id, tenant_id, "tenant")
        if own is None:
            existed, before = tenant_id in state.counters, state.counters.get(tenant_id, 0.0)
            self._lift(state, tenant_id)
            state.lifts[tenant_id] = (state.counters[tenant_id] - before, existed)
            own = state.queues[tenant_id] = deque()
        waiter = _Waiter(next(self._ids), ticket, asyncio.get_running_loop().create_future())
        own.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                if gone is None:
                    return await waiter.future
                return await self._wait_unless_gone(waiter, gone)
        except TimeoutError:
            # The slot may have been granted in the same loop turn as the timeout.
            if _granted(waiter.future):
                return waiter.future.result()
            self._abandon(state, waiter)
            message = f"no slot on runner {runner_id!r} within {timeout}s"
            raise QueueTimeout(message, runner_id, tenant_id) from None
        except BaseException:
            # Cancelled, abandoned (or RunnerGone). A slot granted but not yet
            # taken up is handed on, otherwise it would leak, and the prompt
            # estimate charged at dispatch is refunded: nothing was served.
            if _granted(waiter.future):
                granted = waiter.future.result()
                self.charge(granted, prompt_tokens=0)
                self.release(granted)
            else:
                self._abandon(state, waiter)
            raise

    def charge(
        self,
        ticket: Ticket,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Record the request's token counts *so far* (cumulative totals).

        Call it as often as convenient: each call charges only the difference
        from what was already charged, so streaming code can pass the running
        output count, and the final usage block can be passed as is. A
        ``prompt_tokens`` total replaces the estimate charged at dispatch (up
        or down). Charging after release is allowed: usage often arrives last.
        """
        state = ticket._runner
        if state is None:
            raise ValueError("ticket was never admitted")
        delta = 0.0
        if prompt_tokens is not None:
            if prompt_tokens < 0:
                raise ValueError("prompt_tokens must be >= 0")
            delta += INPUT_TOKEN_WEIGHT * (prompt_tokens - ticket.prompt_tokens_charged)
            ticket.prompt_tokens_charged = prompt_tokens
        if completion_tokens is not None and completion_tokens > ticket.completion_tokens_charged:
            delta += OUTPUT_TOKEN_WEIGHT * (completion_tokens - ticket.completion_tokens_charged)
            ticket.completion_tokens_charged = completion_tokens
        state.counters[ticket.tenant_id] += delta / ticket.weight

    def release(self, ticket: Ticket) -> None:
        """Free the ticket's slot and admit the next waiter. Idempotent."""
        if ticket.released:
            return
        ticket.released = True
        state = ticket._runner
        if state is None:
            return
        if ticket in state.in_flight:
            state.in_flight.discard(ticket)
            state.headroom_in_flight -= ticket.headroom
            state.tenant_in_flight[ticket.tenant_id] -= 1
            if state.tenant_in_flight[ticket.tenant_id] <= 0:
                del state.tenant_in_flight[ticket.tenant_id]
        if self._runners.get(ticket.runner_id) is state:
            self._pump(state)

    def counter(self, runner_id: str, tenant_id: str) -> float:
        """The tenant's virtual token counter on a runner (0.0 if unseen)."""
        state = self._runners.get(runner_id)
        return 0.0 if state is None else state.counters.get(tenant_id, 0.0)

    def snapshot(self) -> SchedulerSnapshot:
        runners: dict[str, RunnerSnapshot] = {}
        for runner_id, state in self._runners.items():
            runners[runner_id] = RunnerSnapshot(
                capacity=state.capacity,
                headroom=state.headroom,
                in_flight=len(state.in_flight),
                in_headroom=state.headroom_in_flight,
                queued=state.queued(),
                abandoned=state.abandoned,
                in_flight_by_tenant=dict(state.tenant_in_flight),
                queued_by_tenant={t: len(q) for t, q in state.queues.items()},
                counters=dict(state.counters),
            )
        return SchedulerSnapshot(policy=self._policy, runners=runners)

    def _state(self, runner_id: str) -> _RunnerState:
        if runner_id not in self._runners:
            self._runners[runner_id] = _RunnerState(capacity=self._default_capacity)
        return self._runners[runner_id]

    def _lift(self, state: _RunnerState, tenant_id: str) -> None:
        """Apply VTC's lift to a tenant that is becoming backlogged."""
        last = state.last_dispatched
        floor = 0.0 if last is None else state.counters[last]
        if state.queues:
            floor = min(state.counters[t] for t in state.queues)
        state.counters[tenant_id] = max(state.counters.get(tenant_id, 0.0), floor)

    def _regular_free(self, state: _RunnerState) -> bool:
        # FCFS keeps no slot for anyone: the headroom slots are plain ones.
        return state.regular_free(state.headroom if self._policy == "fcfs" else 0)

    def _headroom_for(self, state: _RunnerState, tenant_id: str) -> bool:
        """May an arriving request of ``tenant_id`` take a headroom slot now?"""
        if (
            self._policy != "vtc"
            or state.headroom_in_flight >= state.headroom
            or tenant_id in state.tenant_in_flight
            or tenant_id in state.queues
        ):
            return False
        # After the lift its counter is max(own, backlogged minimum): it is the
        # next VTC pick only when its own counter is not above that minimum.
        return not state.queues or state.counters.get(tenant_id, 0.0) <= min(
            state.counters[t] for t in state.queues
        )

    def _dispatch(self, state: _RunnerState, ticket: Ticket, *, headroom: bool = False) -> None:
        ticket.dispatched_at = self._clock()
        ticket._runner = state
        ticket.headroom = headroom
        state.headroom_in_flight += headroom
        state.tenant_in_flight[ticket.tenant_id] += 1
        state.in_flight.add(ticket)
        state.last_dispatched = ticket.tenant_id
        # Charging the prompt estimate now, not when usage arrives, stops a
        # tenant from winning several slots in a row before any usage is known.
        ticket.prompt_tokens_charged = ticket.prompt_tokens_estimate
        charge = INPUT_TOKEN_WEIGHT * ticket.prompt_tokens_estimate / ticket.weight
        state.counters[ticket.tenant_id] += charge  # _lift created the counter

    @staticmethod
    async def _wait_unless_gone(waiter: _Waiter, gone: Callable[[], Awaitable[object]]) -> Ticket:
        """Wait for the slot; raise :class:`Abandoned` if ``gone()`` returns first (or in the
        same turn)."""
        watcher = asyncio.ensure_future(gone())
        try:
            await asyncio.wait((waiter.future, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        fired = watcher.done() and not watcher.cancelled()
        if not fired:
            return waiter.future.result()  # the slot, or RunnerGone
        watcher.exception()  # a watch that failed (the connection broke under it) means gone too
        ticket = waiter.ticket
        raise Abandoned(
            f"the client left the queue of runner {ticket.runner_id!r}",
            ticket.runner_id,
            ticket.tenant_id,
        )

    def _pump(self, state: _RunnerState) -> None:
        """Admit waiters while slots are free: regular ones, then headroom for a tenant with
        none in flight."""
        while state.queues:
            tenant = self._next_tenant(state)
            if self._regular_free(state):
                headroom = False
            elif (
                self._policy == "vtc"
                and state.headroom_in_flight < state.headroom
                and tenant not in state.tenant_in_flight
            ):
                headroom = True
            else:
                return
            waiter = self._pop(state, tenant)
            if waiter.future.done():  # cancelled while queued; its task cleans up the rest
                if tenant not in state.queues:
                    self._take_back_lift(state, tenant)
                continue
            state.lifts.pop(tenant, None)
            self._dispatch(state, waiter.ticket, headroom=headroom)
            waiter.future.set_result(waiter.ticket)

    def _next_tenant(self, state: _RunnerState) -> str:
        """The backlogged tenant dispatched next (``state.queues`` must not be empty)."""
        if self._policy == "vtc":
            return min(state.queues, key=lambda t: (state.counters[t], state.queues[t][0].seq))
        return min(state.queues, key=lambda t: state.queues[t][0].seq)

    @staticmethod
    def _pop(state: _RunnerState, tenant: str) -> _Waiter:
        queue = state.queues[tenant]
        waiter = queue.popleft()
        if not queue:
            del state.queues[tenant]
        return waiter

    def _abandon(self, state: _RunnerState, waiter: _Waiter) -> None:
        state.abandoned += 1
        tenant = waiter.ticket.tenant_id
        queue = state.queues.get(tenant)
        if queue is not None and waiter in queue:  # else _pump already popped it
            queue.remove(waiter)
            if not queue:
                del state.queues[tenant]
                self._take_back_lift(state, tenant)

    @staticmethod
    def _take_back_lift(state: _RunnerState, tenant_id: str) -> None:
        """The tenant's backlog ended with nothing served: undo the lift that started it.

        Only the lift's amount is subtracted, so charges that arrived meanwhile
        (usage of the tenant's requests already running) stay.
        """
        lift = state.lifts.pop(tenant_id, None)
        if lift is None:
            return
        amount, existed = lift
        if not existed and tenant_id not in {t.tenant_id for t in state.in_flight}:
            state.counters.pop(tenant_id, None)
        else:
            state.counters[tenant_id] -= amount
