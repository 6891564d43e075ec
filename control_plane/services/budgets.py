"""Budget enforcement on the request path: is this tenant or key still within budget?

Spending is the sum of ``request_records.cost_usd`` in the budget's calendar
period (``store.budgets.spend``). Asking the database on every request would
put an aggregate query in front of every inference call, so sums are cached
for ``cache_s``. The cache must still be *correct*, which it is within one
control plane:

* a request's cost is known when it finishes, but its record is written a
  moment later, in the background. The guard keeps each finished cost as
  *pending* until a refresh sees its record committed, and adds pending costs
  that the cached sum does not include. So the very next request of a
  client that waits for its answers sees the previous one's cost, cache or no
  cache;
* costs recorded by other replicas are seen at the next refresh, so with
  several replicas a budget can overshoot by what they spend in ``cache_s``
  (plus, on every replica, what was in flight when it ran out: docs/cost.md).

Budget rows are cached for ``cache_s`` too; writes through this process
(API, ``invalidate``) take effect at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, TypeVar

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import utcnow
from outpost.control_plane.services.cost import BudgetState, BudgetWindow, check_budget
from outpost.control_plane.store.budgets import committed_ids, list_budgets, spend

__all__ = ["WARNING_HEADER", "BudgetGuard", "BudgetStatus", "BudgetVerdict"]

log = logging.getLogger("outpost.budgets")
T = TypeVar("T")

#: Response header set while a budget is past its soft threshold.
WARNING_HEADER = "X-Outpost-Budget-Warning"
# Pending costs are dropped this long after their record committed: every
# cache entry has been refreshed since (cache_s is capped well below it), so
# none still needs them. A record not yet committed (the writer is waiting for
# the database) keeps its cost pending however long that takes.
_PENDING_KEEP_S = 120.0
# ... but not forever: a record the writer gave up on (logged at ERROR) never commits.
_PENDING_MAX_S = 3600.0


@dataclass(frozen=True)
class BudgetStatus:
    budget_id: str
    scope: Literal["tenant", "key"]
    api_key_id: str | None
    period: str
    amount_usd: float
    soft_threshold: float
    spent_usd: float
    state: BudgetState
    period_start: datetime
    period_end: datetime

    def retry_after_s(self, now: datetime) -> int:
        """Whole seconds until the period resets, for ``Retry-After``."""
        return max(1, math.ceil((self.period_end - now).total_seconds()))

    def describe(self) -> str:
        adjective = {"day": "daily", "week": "weekly", "month": "monthly"}[self.period]
        return f"{self.scope} {adjective} budget of ${self.amount_usd:.2f}"


@dataclass(frozen=True)
class BudgetVerdict:
    now: datetime
    statuses: list[BudgetStatus]

    @property
    def exceeded(self) -> BudgetStatus | None:
        """The exceeded budget that resets last (the one that decides when to come back)."""
        over = [s for s in self.statuses if s.state is BudgetState.EXCEEDED]
        return max(over, key=lambda s: s.period_end) if over else None

    @property
    def warnings(self) -> list[BudgetStatus]:
        return [s for s in self.statuses if s.state is BudgetState.SOFT]

    def headers(self) -> dict[str, str]:
        """``X-Outpost-Budget-Warning`` for budgets past their soft threshold (none otherwise)."""
        if not self.warnings:
            return {}
        parts = [
            f"{s.scope} {s.period} budget {s.spent_usd / s.amount_usd:.0%} used "
            f"(${s.spent_usd:.4f} of ${s.amount_usd:.2f})"
            for s in self.warnings
        ]
        return {WARNING_HEADER: "; ".join(parts)}


@dataclass(frozen=True)
class _Budget:
    id: str
    api_key_id: str | None
    period: str
    amount_usd: float
    soft_threshold: float


@dataclass(frozen=True)
class _Pending:
    tenant_id: str
    api_key_id: str | None
    cost: float
    at: datetime
    added: float  # monotonic
    committed: float | None = None  # monotonic, when its record was committed


@dataclass
class _Sum:
    value: float
    fetched: float  # monotonic
    # Pending requests whose records this sum already includes.
    included: set[str] = field(default_factory=set)


class BudgetGuard:
    """Budget checks with a short cache that never misses this process's own spending."""

    def __init__(
        self,
        *,
        cache_s: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= cache_s <= 30:
            raise ValueError("cache_s must be within [0, 30]")
        self.cache_s = cache_s
        self.clock = clock  # wall clock (UTC): decides the calendar period
        self._monotonic = monotonic
        self._budgets: dict[str, tuple[float, list[_Budget]]] = {}
        self._sums: dict[tuple[str, str | None, datetime], _Sum] = {}
        self._pending: dict[str, _Pending] = {}
        self._warned: set[tuple[str, datetime]] = set()
        self._flights: dict[
            tuple[object, ...], asyncio.Task[Any]
        ] = {}  # database reads in progress

    def add_spend(
        self, request_id: str, tenant_id: str, api_key_id: str | None, cost: float, at: datetime
    ) -> None:
        """A request finished and cost ``cost``; its record, created ``at``, is about to be
        written."""
        if cost > 0:
            self._pending[request_id] = _Pending(tenant_id, api_key_id, cost, at, self._monotonic())

    def records_committed(self, request_ids: list[str]) -> None:
        """The request-record writer committed these records: their costs may expire from
        pending."""
        mono = self._monotonic()
        for rid in request_ids:
            if (p := self._pending.get(rid)) is not None and p.committed is None:
                self._pending[rid] = replace(p, committed=mono)

    def invalidate(self, tenant_id: str) -> None:
        """Budgets of the tenant changed: read them again on the next check."""
        self._budgets.pop(tenant_id, None)

    async def check(self, db: Database, tenant_id: str, api_key_id: str | None) -> BudgetVerdict:
        """Every budget that applies to the key (its own and its tenant's), with current
        spending."""
        budgets = [
            b
            for b in await self._budgets_of(db, tenant_id)
            if b.api_key_id is None or b.api_key_id == api_key_id
        ]
        return await self._evaluate(db, tenant_id, budgets)

    async def report(self, db: Database, tenant_id: str) -> BudgetVerdict:
        """Every budget of the tenant, the keys' included, read afresh (for the API)."""
        self.invalidate(tenant_id)
        return await self._evaluate(db, tenant_id, await self._budgets_of(db, tenant_id))

    async def _evaluate(
        self, db: Database, tenant_id: str, budgets: list[_Budget]
    ) -> BudgetVerdict:
        now = self.clock()
        statuses: list[BudgetStatus] = []
        for b in budgets:
            # The column is a plain string; BudgetWindow checks it is one of its periods.
            window = BudgetWindow(b.period)  # type: ignore[arg-type]
            start, end = window.start(now), window.end(now)
            spent = await self._spent(db, tenant_id, b.api_key_id, start, end)
            state = check_budget(spent, b.amount_usd, b.soft_threshold)
            statuses.append(
                BudgetStatus(
                    budget_id=b.id,
                    scope="tenant" if b.api_key_id is None else "key",
                    api_key_id=b.api_key_id,
                    period=b.period,
                    amount_usd=b.amount_usd,
                    soft_threshold=b.soft_threshold,
                    spent_usd=spent,
                    state=state,
                    period_start=start,
                    period_end=end,
                )
            )
            if state is not BudgetState.OK and (b.id, start) not in self._warned:
                self._warned.add(
                    (b.id, start)
                )  # one log line per budget and period, not per request
                log.warning(
                    "tenant %s: %s budget %s is %s: spent $%.4f of $%.2f this %s",
                    tenant_id,
                    "key " + b.api_key_id if b.api_key_id else "tenant",
                    b.id,
                    state.value,
                    spent,
                    b.amount_usd,
                    b.period,
                )
        return BudgetVerdict(now=now, statuses=statuses)

    async def _budgets_of(self, db: Database, tenant_id: str) -> list[_Budget]:
        cached = self._budgets.get(tenant_id)
        if cached is not None and self._monotonic() - cached[0] < self.cache_s:
            return cached[1]
        return await self._once(("budgets", tenant_id), lambda: self._read_budgets(db, tenant_id))

    async def _read_budgets(self, db: Database, tenant_id: str) -> list[_Budget]:
        async with db.session() as session:
            rows = [
                _Budget(b.id, b.api_key_id, b.period, b.amount_usd, b.soft_threshold)
                for b in await list_budgets(session, tenant_id)
            ]
        self._budgets[tenant_id] = (self._monotonic(), rows)
        return rows

    async def _once(self, key: tuple[object, ...], read: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """One database read per key at a time; concurrent checks share it.

        When a cached value expires under load, every request of the tenant
        needs it at the same moment; each taking a pooled connection for the
        same query is what ran the pool dry in the scale benchmark.
        """
        task = self._flights.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(read())
            self._flights[key] = task
            task.add_done_callback(lambda _t: self._flights.pop(key, None))
        # Shielded: one waiter's cancellation (its client left) must not fail the others.
        return await asyncio.shield(task)

    async def _spent(
        self, db: Database, tenant_id: str, api_key_id: str | None, start: datetime, end: datetime
    ) -> float:
        mono = self._monotonic()
        self._prune(mono)
        mine = {
            rid: p
            for rid, p in self._pending.items()
            if p.tenant_id == tenant_id
            and (api_key_id is None or p.api_key_id == api_key_id)
            and start <= p.at < end
        }
        key = (tenant_id, api_key_id, start)
        cached = self._sums.get(key)
        if cached is None or mono - cached.fetched >= self.cache_s:
            cached = await self._once(
                ("sum", *key), lambda: self._read_sum(db, key, end, list(mine))
            )
        return cached.value + sum(p.cost for rid, p in mine.items() if rid not in cached.included)

    async def _read_sum(
        self, db: Database, key: tuple[str, str | None, datetime], end: datetime, pending: list[str]
    ) -> _Sum:
        mono = self._monotonic()
        tenant_id, api_key_id, start = key
        async with db.session() as session:
            value = await spend(session, tenant_id, api_key_id, start, end)
            included = await committed_ids(session, pending)
        self._sums[key] = _Sum(value, mono, included)
        return self._sums[key]

    def _prune(self, mono: float) -> None:
        for rid in [
            rid
            for rid, p in self._pending.items()
            if (p.committed is not None and mono - p.committed > _PENDING_KEEP_S)
            or mono - p.added > _PENDING_MAX_S
        ]:
            del self._pending[rid]
        for key in [k for k, s in self._sums.items() if mono - s.fetched > _PENDING_KEEP_S]:
            del self._sums[key]
