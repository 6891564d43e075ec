"""Admission on the request path: budgets, fair queues per runner, engine-time cost.

One :class:`Admission` per control plane ties together the pure building
blocks of ``services/`` (docs/cost.md):

* :meth:`Admission.check_budget` before routing: an exceeded budget is a 429
  ``budget_exceeded`` with ``Retry-After``; a budget past its soft threshold
  adds ``X-Outpost-Budget-Warning`` to the response;
* :meth:`Admission.acquire` after a runner is picked and before the stream is
  opened: waits in that runner's fair queue (:class:`FairScheduler`) and
  returns a :class:`Slot`;
* :meth:`Slot.finish` in every exit path: charges the real usage to the
  tenant's virtual counter, frees the slot, prices the request from the
  runner's rate and its share of engine time, and feeds the fairness metrics.
  :meth:`Slot.abandon` frees a slot whose runner failed before answering.

A client that disconnects while its request waits in a queue leaves it at
once (``AdmissionRequest.client_gone``): the request is never sent to the
runner and its tenant is not charged for it (docs/fairness.md).

The scheduler's capacities follow the hub: :meth:`runner_changed` is a hub
listener.

A runner with several engines (status.v1 ``engines``, docs/protocol.md
"Engine slots") has one fair queue per engine, keyed
``"{runner_id}#{first model of the engine}"`` with that engine's capacity and
headroom, so no model gets more requests in flight than its engine has
slots. Engine time is still metered per runner: the runner's hourly rate
pays for all its engines at once (docs/fairness.md).

With several control-plane replicas (control_plane/cluster), a runner's one
fair queue lives on the replica that holds its tunnel. A replica that
receives a request for a runner held elsewhere takes no slot of its own:
:meth:`Admission.relayed` gives it a :class:`Slot` outside any queue, the
holder admits the request through :meth:`Admission.acquire` and answers
:class:`HolderAdmitted` (then :meth:`Slot.admitted` starts the engine-time
span) or :class:`HolderRefused` (the same 429/503 error the holder would
have answered its own client). The holder frees its slot with
:meth:`Slot.finish_at_holder`; pricing, budgets and the record stay with
the replica the client is connected to (docs/fairness.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.errors import ApiError
from outpost.control_plane.routing.load import runner_status
from outpost.control_plane.routing.service_fairness import ServiceFairness
from outpost.control_plane.services.budgets import BudgetGuard, BudgetVerdict
from outpost.control_plane.services.cost import (
    EngineShare,
    EngineSpan,
    EngineTimeMeter,
    cost_for_request,
)
from outpost.control_plane.services.scheduler import (
    Abandoned,
    FairScheduler,
    QueueFull,
    QueueTimeout,
    Ticket,
)
from outpost.control_plane.settings import Settings
from outpost.control_plane.tunnel.hub import ConnectedRunner
from outpost.sdk.protocol import Usage

__all__ = ["Admission", "AdmissionRequest", "HolderAdmitted", "HolderRefused", "Slot"]


class AdmissionRequest(Protocol):
    """What admission reads of a request (``serving.InferenceCall`` has it)."""

    @property
    def request_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def api_key_id(self) -> str | None: ...

    # Optional, read with getattr: ``client_gone``, a callable whose awaitable
    # returns when the client has disconnected (openai/disconnect.py); ``model``,
    # the requested model name or alias, which picks the engine's queue on a
    # runner with several engines.


class Admission:
    def __init__(
        self,
        *,
        scheduler: FairScheduler | None = None,
        meter: EngineTimeMeter | None = None,
        fairness: ServiceFairness | None = None,
        budgets: BudgetGuard | None = None,
        queue_timeout_s: float | None = None,
    ) -> None:
        self.scheduler = scheduler or FairScheduler()
        self.meter = meter or EngineTimeMeter()
        # A wait under 1 ms is a free slot, not a backlog.
        self.fairness = fairness or ServiceFairness(backlog_wait_s=0.001)
        self.budgets = budgets or BudgetGuard()
        self.queue_timeout_s = queue_timeout_s
        # Per scheduler key: (capacity, headroom) as last given to the scheduler.
        self._capacity: dict[str, tuple[int, int]] = {}
        # Runner id -> the scheduler keys of its engines' queues (not its own key).
        self._engine_keys: dict[str, set[str]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        wall_clock: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
    ) -> Admission:
        """``wall_clock`` decides budget periods and record times; ``clock`` times queues and
        engine use."""
        return cls(
            scheduler=FairScheduler(
                policy=settings.scheduler_policy,
                max_queue_per_runner=settings.scheduler_max_queue,
                max_queue_per_tenant=settings.scheduler_max_queue_per_tenant,
                clock=clock,
            ),
            meter=EngineTimeMeter(clock),
            fairness=ServiceFairness(
                window_s=settings.fairness_window_s, backlog_wait_s=0.001, clock=clock
            ),
            budgets=BudgetGuard(cache_s=settings.budget_cache_s, clock=wall_clock, monotonic=clock),
            queue_timeout_s=settings.scheduler_queue_timeout_s,
        )

    # -- runners ---------------------------------------------------------------

    def runner_changed(self, runner: ConnectedRunner, connected: bool) -> None:
        """Hub listener: a hello sets the runner's capacity; losing its last link forgets it."""
        if connected:
            self._sync_capacity(runner, None)
        else:
            for key in (runner.runner_id, *self._engine_keys.pop(runner.runner_id, ())):
                self._capacity.pop(key, None)
                self.scheduler.forget_runner(key)

    def queue_key(self, runner: ConnectedRunner, model: str | None) -> tuple[str, int, int]:
        """The scheduler key ``model``'s requests to ``runner`` queue under, with its (capacity,
        headroom).

        The engine's own key when the runner's status lists its engines and one serves
        ``model`` (a name or alias); otherwise the runner's key with the hello's capacity.
        """
        status = runner_status(runner)
        if status.engines and model:
            info = runner.serves(model)
            name = info.name if info is not None else model
            for engine in status.engines:
                if name in engine.models:
                    return (
                        f"{runner.runner_id}#{engine.models[0]}",
                        engine.capacity,
                        engine.headroom,
                    )
        return runner.runner_id, max(runner.capacity, 1), status.headroom

    def _sync_capacity(self, runner: ConnectedRunner, model: str | None) -> str:
        # Also covers runners no hub listener announced (held by another replica).
        # Headroom and engines arrive in status frames, so they are read at every admission.
        key, capacity, headroom = self.queue_key(runner, model)
        if key != runner.runner_id:
            self._engine_keys.setdefault(runner.runner_id, set()).add(key)
        if self._capacity.get(key) != (capacity, headroom):
            self._capacity[key] = (capacity, headroom)
            self.scheduler.set_capacity(key, capacity, headroom)
        return key

    # -- budgets ---------------------------------------------------------------

    async def check_budget(self, db: Database, call: AdmissionRequest) -> BudgetVerdict:
        """Raise 429 ``budget_exceeded`` if a budget of the key or its tenant is spent."""
        verdict = await self.budgets.check(db, call.tenant_id, call.api_key_id)
        over = verdict.exceeded
        if over is not None:
            self.fairness.record_rejection(call.tenant_id)
            retry = over.retry_after_s(verdict.now)
            scope = "key's" if over.scope == "key" else "tenant's"
            raise ApiError(
                429,
                f"The {scope} {over.describe().split(' ', 1)[1]} is exhausted (spent "
                f"${over.spent_usd:.2f}); "
                f"it resets at {over.period_end.isoformat()}.",
                type="budget_exceeded",
                code="budget_exceeded",
                headers={"Retry-After": str(retry)},
            )
        return verdict

    # -- slots -----------------------------------------------------------------

    async def acquire(
        self,
        call: AdmissionRequest,
        runner: ConnectedRunner,
        *,
        prompt_tokens: int,
        weight: float = 1.0,
    ) -> Slot:
        """Wait for a slot on ``runner`` in its fair queue.

        Raises 429 ``queue_full``, 503 ``queue_timeout`` or, when the client
        disconnected while queued, 499 ``client_disconnected`` (nobody reads it;
        the request record keeps it) as :class:`ApiError`; lets
        :class:`~control_plane.services.scheduler.RunnerGone` through so the
        caller can fail over.
        """
        key = self._sync_capacity(runner, getattr(call, "model", None))
        runner.queued += 1
        try:
            ticket = await self.scheduler.acquire(
                key,
                call.tenant_id,
                max(prompt_tokens, 0),
                weight=weight if weight > 0 else 1.0,
                timeout=self.queue_timeout_s,
                gone=getattr(call, "client_gone", None),
            )
        except Abandoned:
            raise ApiError(
                499,
                "The client disconnected while the request was queued.",
                type="client_disconnected",
                code="client_disconnected",
            ) from None
        except QueueFull as exc:
            self.fairness.record_rejection(call.tenant_id)
            which = "this tenant's share of the queue" if exc.scope == "tenant" else "the queue"
            raise ApiError(
                429,
                f"Runner '{runner.name}' is busy and {which} is full; retry shortly.",
                type="queue_full",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None
        except QueueTimeout:
            self.fairness.record_rejection(call.tenant_id)
            raise ApiError(
                503,
                f"No slot on runner '{runner.name}' within {self.queue_timeout_s:g}s.",
                type="queue_timeout",
                code="queue_timeout",
                headers={"Retry-After": "5"},
            ) from None
        finally:
            runner.queued -= 1
        self.fairness.record_queue_wait(call.tenant_id, ticket.queue_wait_s)
        return Slot(self, call, runner, ticket, self.meter.start(runner.runner_id))

    def relayed(
        self,
        call: AdmissionRequest,
        runner: ConnectedRunner,
        *,
        prompt_tokens: int,
        weight: float = 1.0,
    ) -> Slot:
        """A slot for a request the runner's holder admits (another replica): no local queue or
        slot.

        Its engine-time span starts when the holder admits it (:meth:`Slot.admitted`).
        """
        now = self.scheduler.clock()
        ticket = Ticket(
            0,
            runner.runner_id,
            call.tenant_id,
            weight if weight > 0 else 1.0,
            max(prompt_tokens, 0),
            now,
            dispatched_at=now,
        )
        return Slot(self, call, runner, ticket, None)

    # -- metrics ---------------------------------------------------------------

    def service_snapshot(self, tenant_id: str) -> dict[str, Any]:
        """Fairness over the window and the queues now, as ``tenant_id`` may see them.

        Fleet-wide figures (Jain's index, worst share, largest gap) are over
        every tenant; per-tenant details of other tenants are listed under
        anonymous labels, so no tenant learns another's id or traffic by name.
        """
        sched = self.scheduler.snapshot()
        self.fairness.mark_backlogged(
            {t for r in sched["runners"].values() for t in r["queued_by_tenant"]}
        )
        fair: dict[str, Any] = dict(self.fairness.snapshot())
        labels: dict[str, str] = {tenant_id: tenant_id}

        def label(t: str) -> str:
            return labels.setdefault(t, f"other-{len(labels)}")

        fair["tenants"] = {
            label(t): v
            for t, v in sorted(fair["tenants"].items(), key=lambda kv: kv[0] != tenant_id)
        }
        runners = {}
        for runner_id, r in sched["runners"].items():
            if self._engine_keys.get(runner_id) and not (r["in_flight"] or r["queued"]):
                # The hello's runner-wide queue, unused once the status listed the engines.
                continue
            runners[runner_id] = {
                "capacity": r["capacity"],
                "headroom": r["headroom"],
                "in_flight": r["in_flight"],
                "in_headroom": r["in_headroom"],
                "queued": r["queued"],
                "abandoned": r["abandoned"],
                "queued_by_tenant": {label(t): n for t, n in r["queued_by_tenant"].items()},
                "in_flight_by_tenant": {label(t): n for t, n in r["in_flight_by_tenant"].items()},
                "counters": {label(t): c for t, c in r["counters"].items()},
            }
        return {"tenant_id": tenant_id, "policy": sched["policy"], **fair, "runners": runners}


@dataclass(frozen=True)
class HolderAdmitted:
    """The replica holding the runner admitted a relayed request (a stream event at the origin)."""

    queue_wait_s: float


@dataclass(frozen=True)
class HolderRefused:
    """The holder refused a relayed request (queue full, queue timeout): its error, as the
    origin answers it."""

    error: ApiError


@dataclass(frozen=True)
class _Priced:
    share: EngineShare
    rate_usd_per_s: float
    cost_usd: float
    at: datetime


class Slot:
    """A request admitted to a runner: hold it while the runner works, then finish it once."""

    def __init__(
        self,
        admission: Admission,
        call: AdmissionRequest,
        runner: ConnectedRunner,
        ticket: Ticket,
        span: EngineSpan | None,
    ) -> None:
        self._admission = admission
        self.call = call
        self.runner = runner
        self.ticket = ticket
        self._span = span
        self.priced: _Priced | None = None

    @property
    def queue_wait_s(self) -> float:
        return self.ticket.queue_wait_s

    @property
    def started(self) -> bool:
        """Dispatched: admitted here, or admitted by the holder and told so."""
        return self._span is not None or self.priced is not None

    @property
    def local(self) -> bool:
        """Admitted by this replica's scheduler (not by another replica that holds the runner)."""
        return self.ticket._runner is not None

    def admitted(self, queue_wait_s: float) -> None:
        """The holder admitted this relayed request after ``queue_wait_s`` in its queue: the
        engine starts."""
        if self._span is None and self.priced is None:
            self.ticket.dispatched_at = self.ticket.enqueued_at + max(queue_wait_s, 0.0)
            self._span = self._admission.meter.start(
                self.runner.runner_id
            )  # the holder recorded the wait

    def finish_at_holder(self, usage: Usage | None) -> None:
        """The holder's side of a relayed request is over: charge its counter, free the slot.
        Idempotent.

        Pricing, budgets and the fairness window are the origin's (:meth:`finish` there).
        """
        if self.priced is not None:
            return
        adm = self._admission
        if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            adm.scheduler.charge(
                self.ticket,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        adm.scheduler.release(self.ticket)
        share = adm.meter.finish(self._span) if self._span is not None else EngineShare(0.0, 0.0)
        self.priced = _Priced(share, 0.0, 0.0, adm.budgets.clock())

    def finish(self, usage: Usage | None, ttft_ms: float | None = None) -> None:
        """Charge the usage, free the slot and price the request. Idempotent.

        Called from the ``finally`` of the response, whatever happened:
        success, engine error, lost runner or client disconnect. Without usage
        (a disconnect) the tenant stays charged its prompt estimate, and the
        engine time it held is still paid for.
        """
        if self.priced is not None:
            return
        adm, tenant = self._admission, self.call.tenant_id
        if (
            not self.local
        ):  # the holder charges its counter; here only what the record and metrics need
            if usage is not None and (usage.prompt_tokens or usage.completion_tokens):
                self.ticket.prompt_tokens_charged = usage.prompt_tokens
                self.ticket.completion_tokens_charged = usage.completion_tokens
        elif usage is not None and (usage.prompt_tokens or usage.completion_tokens):
            # Before release: the next dispatch must see this tenant's real service.
            adm.scheduler.charge(
                self.ticket,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            )
        adm.scheduler.release(self.ticket)
        share = adm.meter.finish(self._span) if self._span is not None else EngineShare(0.0, 0.0)
        rate = self.runner.usd_per_second
        cost = cost_for_request(rate, share.wall_seconds, min(share.concurrent_share, 1.0))
        self.priced = _Priced(share, rate, cost, adm.budgets.clock())
        adm.budgets.add_spend(
            self.call.request_id, tenant, self.call.api_key_id, cost, self.priced.at
        )
        adm.fairness.record_request(tenant)
        adm.fairness.record_service(
            tenant,
            prompt_tokens=self.ticket.prompt_tokens_charged,
            completion_tokens=self.ticket.completion_tokens_charged,
            weight=self.ticket.weight,
        )
        if ttft_ms is not None:
            adm.fairness.record_ttft(tenant, ttft_ms / 1000)

    def abandon(self) -> None:
        """The runner failed before answering (failover): free the slot; nothing is billed."""
        if self.priced is not None:
            return
        self._admission.scheduler.release(self.ticket)
        span = self._span
        share = self._admission.meter.finish(span) if span is not None else EngineShare(0.0, 0.0)
        self.priced = _Priced(share, 0.0, 0.0, self._admission.budgets.clock())

    def record_fields(self) -> dict[str, Any]:
        """Columns of the request record this slot fills (``created_at`` is when it was priced)."""
        fields: dict[str, Any] = {"queue_ms": self.ticket.queue_wait_s * 1000}
        if self.priced is not None:
            fields.update(
                engine_share_s=self.priced.share.share_seconds,
                cost_usd=self.priced.cost_usd,
                created_at=self.priced.at,
            )
        return fields
