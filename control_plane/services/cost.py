"""What a request costs: runner cost models, engine-time shares, budgets.

A runner costs a rate in $/s, rented (:class:`HourlyCost`) or as electricity
(:class:`PowerCost`). A request pays that rate times its share of engine
time: while ``n`` requests run together, each pays ``1/n`` of every second,
``share_seconds = integral over the request's life of dt / n(t)``
(:class:`EngineTimeMeter`). Shares sum to the runner's busy time, so busy time
is charged exactly once and idle time to nobody. Budgets use calendar periods
in UTC (:class:`BudgetWindow`). docs/cost.md gives the reasons for every
default number and the HTTP contract for an exceeded budget.
"""

from __future__ import annotations

import calendar
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

# The tables and the $/hour rule are the shared contract's (sdk/pricing.py); re-exported for
# billing.
from outpost.sdk.pricing import DEFAULT_TDP_WATTS, DEFAULT_USD_PER_HOUR, HardwareClass, hourly_rate

__all__ = [
    "DEFAULT_TDP_WATTS",
    "DEFAULT_USD_PER_HOUR",
    "BudgetPeriod",
    "BudgetState",
    "BudgetWindow",
    "EngineShare",
    "EngineSpan",
    "EngineTimeMeter",
    "HardwareClass",
    "HourlyCost",
    "NvmlLike",
    "NvmlPowerReader",
    "PowerCost",
    "RaplPowerReader",
    "RateSource",
    "check_budget",
    "cost_for_request",
    "expected_cost",
    "hourly_rate",
]

WattsSource = Callable[[], float | None]


class RateSource(Protocol):
    """A live rate ($/s): :class:`HourlyCost` or :class:`PowerCost` (the hello's model is
    sdk.pricing.CostModel)."""

    def usd_per_second(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HourlyCost:
    """A flat rate: rented hardware, or owned hardware amortised per hour."""

    usd_per_hour: float

    def __post_init__(self) -> None:
        if self.usd_per_hour < 0:
            raise ValueError("usd_per_hour must be >= 0")

    @classmethod
    def for_hardware(cls, hardware: HardwareClass, count: int = 1) -> HourlyCost:
        """The default rate for ``count`` GPUs (or machines) of a class."""
        return cls(DEFAULT_USD_PER_HOUR[hardware] * count)

    def usd_per_second(self) -> float:
        return self.usd_per_hour / 3600.0

    def describe(self) -> dict[str, Any]:
        return {"kind": "hourly", "usd_per_hour": self.usd_per_hour}


class PowerCost:
    """Electricity: measured watts x $/kWh (x PUE for cooling and losses).

    ``watts_source`` returns the draw or ``None`` if unreadable, when
    ``fallback_watts`` (e.g. from :data:`DEFAULT_TDP_WATTS`) is used. A reading
    is reused for ``refresh_s``: routing asks for the rate on every request,
    and a RAPL average over microseconds is noise.
    """

    def __init__(
        self,
        watts_source: WattsSource,
        usd_per_kwh: float,
        *,
        fallback_watts: float | None = None,
        pue: float = 1.0,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if usd_per_kwh < 0 or pue < 1.0:
            raise ValueError("usd_per_kwh must be >= 0 and pue >= 1")
        self._source, self._usd_per_kwh, self._pue = watts_source, usd_per_kwh, pue
        self._fallback, self._refresh_s, self._clock = fallback_watts, refresh_s, clock
        self._reading: tuple[float, float, bool] | None = None  # (at, watts, measured)

    def watts(self) -> float:
        now = self._clock()
        if self._reading is None or now - self._reading[0] >= self._refresh_s:
            measured = self._source()
            watts = measured if measured is not None else self._fallback
            if watts is None:
                raise RuntimeError("power is not readable and no fallback_watts was given")
            self._reading = (now, watts, measured is not None)
        return self._reading[1]

    def usd_per_second(self) -> float:
        # 1 kWh = 3.6e6 J = 3.6e6 W*s.
        return self.watts() * self._pue * self._usd_per_kwh / 3.6e6

    def describe(self) -> dict[str, Any]:
        watts, measured = (None, False) if self._reading is None else self._reading[1:]
        return {
            "kind": "power",
            "usd_per_kwh": self._usd_per_kwh,
            "pue": self._pue,
            "watts": watts,
            "measured": measured,
        }


class NvmlLike(Protocol):
    """The part of ``pynvml`` (package nvidia-ml-py) that power reading needs."""

    @property
    def NVMLError(self) -> type[Exception]: ...

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int: ...


class NvmlPowerReader:
    """Board power of GPUs ``indices``, summed, in watts (``None`` if unreadable)."""

    def __init__(self, nvml: NvmlLike, indices: list[int]) -> None:  # nvml: pynvml, initialised
        self._nvml = nvml
        self._indices = indices

    def __call__(self) -> float | None:
        nvml = self._nvml
        try:
            milliwatts = sum(
                nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(i))
                for i in self._indices
            )
        except nvml.NVMLError:
            return None
        return milliwatts / 1000.0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class RaplPowerReader:
    """CPU package power from RAPL energy counters under /sys/class/powercap.

    Average watts between two calls, from the ``energy_uj`` counters of the
    top-level ``intel-rapl:N`` zones (sub-zones are inside them; summing them
    too would count twice). The counters wrap at ``max_energy_range_uj``.
    Returns ``None`` on the first call and whenever a counter is unreadable
    (``energy_uj`` is root-only on kernels patched for CVE-2020-8694).
    """

    def __init__(
        self,
        root: Path = Path("/sys/class/powercap"),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._clock = clock
        self._last: tuple[float, dict[str, int | None]] | None = None

    def __call__(self) -> float | None:
        zones = [z for z in sorted(self._root.glob("intel-rapl:*")) if z.name.count(":") == 1]
        now = self._clock()
        readings = {z.name: _read_int(z / "energy_uj") for z in zones}
        last, self._last = self._last, (now, readings)
        if not readings or last is None or now <= last[0]:
            return None
        joules = 0.0
        for zone, energy in readings.items():
            before = last[1].get(zone)
            if energy is None or before is None:
                return None
            delta = energy - before
            if delta < 0:
                wrap = _read_int(self._root / zone / "max_energy_range_uj")
                if wrap is None:
                    return None
                delta += wrap
            joules += delta / 1e6
        return joules / (now - last[0])


def cost_for_request(
    rate_usd_per_s: float, engine_seconds: float, concurrent_share: float = 1.0
) -> float:
    """Dollars for a request that ran ``engine_seconds`` of wall time on a runner
    costing ``rate_usd_per_s``, with ``concurrent_share`` its average share of
    the engine (mean of 1/n over its life; :attr:`EngineShare.concurrent_share`).
    """
    if rate_usd_per_s < 0 or engine_seconds < 0 or not 0 <= concurrent_share <= 1:
        raise ValueError("rate and seconds must be >= 0, share within [0, 1]")
    return rate_usd_per_s * engine_seconds * concurrent_share


def expected_cost(
    runner: RateSource,
    prompt_tokens: int,
    max_tokens: int,
    tokens_per_second: float,
    *,
    prefill_tokens_per_second: float | None = None,
    concurrency: float = 1.0,
) -> float:
    """Upper-bound estimate of a request's cost on a runner, for the ``cost`` policy.

    Assumes ``max_tokens`` are generated at ``tokens_per_second`` (the
    runner's per-request decode speed) after a prefill at
    ``prefill_tokens_per_second`` (default 10x decode), sharing the engine
    with ``concurrency`` requests in all (this one included).
    """
    if tokens_per_second <= 0 or concurrency < 1:
        raise ValueError("tokens_per_second must be > 0 and concurrency >= 1")
    prefill_tps = prefill_tokens_per_second or 10.0 * tokens_per_second
    seconds = prompt_tokens / prefill_tps + max_tokens / tokens_per_second
    return cost_for_request(runner.usd_per_second(), seconds, 1.0 / concurrency)


@dataclass(frozen=True)
class EngineShare:
    wall_seconds: float
    share_seconds: float

    @property
    def concurrent_share(self) -> float:
        return 1.0 if self.wall_seconds == 0 else self.share_seconds / self.wall_seconds


@dataclass(eq=False)
class EngineSpan:
    runner_id: str
    started_at: float
    virtual_start: float
    result: EngineShare | None = None


@dataclass
class _Engine:
    in_flight: int = 0
    virtual: float = 0.0  # integral of dt / n(t) over busy time so far
    busy_seconds: float = 0.0
    updated_at: float = 0.0


class EngineTimeMeter:
    """Tracks requests in flight per runner and each one's share of engine time.

    Like processor sharing's virtual time: a per-runner clock that advances
    at ``1/n`` while ``n`` requests run, so a request's share is the virtual
    time elapsed between its start and finish.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._engines: dict[str, _Engine] = {}

    def _advance(self, engine: _Engine, now: float) -> None:
        if engine.in_flight:
            elapsed = now - engine.updated_at
            engine.virtual += elapsed / engine.in_flight
            engine.busy_seconds += elapsed
        engine.updated_at = now

    def start(self, runner_id: str) -> EngineSpan:
        now = self.clock()
        engine = self._engines.setdefault(runner_id, _Engine(updated_at=now))
        self._advance(engine, now)
        engine.in_flight += 1
        return EngineSpan(runner_id, now, engine.virtual)

    def finish(self, span: EngineSpan) -> EngineShare:
        """End a span; calling it again returns the same result."""
        if span.result is not None:
            return span.result
        now = self.clock()
        engine = self._engines[span.runner_id]
        self._advance(engine, now)
        engine.in_flight -= 1
        span.result = EngineShare(now - span.started_at, engine.virtual - span.virtual_start)
        return span.result

    def busy_seconds(self, runner_id: str) -> float:
        """Seconds the runner had at least one request, up to now."""
        engine = self._engines.get(runner_id)
        if engine is None:
            return 0.0
        self._advance(engine, self.clock())
        return engine.busy_seconds


BudgetPeriod = Literal["day", "week", "month"]


class BudgetState(enum.StrEnum):
    OK = "ok"
    SOFT = "soft"
    EXCEEDED = "exceeded"


@dataclass(frozen=True)
class BudgetWindow:
    """A calendar period in UTC: days from midnight, ISO weeks from Monday."""

    period: BudgetPeriod

    def __post_init__(self) -> None:
        if self.period not in ("day", "week", "month"):
            raise ValueError(f"unknown budget period {self.period!r}")

    def start(self, now: datetime) -> datetime:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "week":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1) if self.period == "month" else day

    def end(self, now: datetime) -> datetime:
        """When the period containing ``now`` ends (the next one starts)."""
        start = self.start(now)
        days = {"day": 1, "week": 7}.get(self.period)
        return start + timedelta(days=days or calendar.monthrange(start.year, start.month)[1])

    def seconds_until_reset(self, now: datetime) -> float:
        """For ``Retry-After`` on a ``budget_exceeded`` error."""
        return (self.end(now) - now).total_seconds()


def check_budget(spent: float, amount: float, soft_threshold: float = 0.8) -> BudgetState:
    """Where ``spent`` stands against a budget of ``amount`` dollars.

    ``EXCEEDED`` once spending reaches the budget (a hard stop: refuse new
    requests), ``SOFT`` from ``soft_threshold x amount`` (warn, keep serving).
    Pass ``spent + expected cost`` to refuse a request that would cross it.
    """
    if amount < 0 or not 0 < soft_threshold <= 1:
        raise ValueError("amount must be >= 0 and soft_threshold within (0, 1]")
    if spent >= amount:
        return BudgetState.EXCEEDED
    if spent >= soft_threshold * amount:
        return BudgetState.SOFT
    return BudgetState.OK
