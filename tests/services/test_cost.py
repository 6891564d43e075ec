"""Cost models, engine-time shares and budget periods."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from outpost.control_plane.services.cost import (
    DEFAULT_TDP_WATTS,
    DEFAULT_USD_PER_HOUR,
    BudgetState,
    BudgetWindow,
    EngineTimeMeter,
    HourlyCost,
    NvmlPowerReader,
    PowerCost,
    RaplPowerReader,
    check_budget,
    cost_for_request,
    expected_cost,
)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_hourly_cost_rate_and_defaults() -> None:
    assert HourlyCost(3.6).usd_per_second() == pytest.approx(0.001)
    assert HourlyCost.for_hardware("nvidia-h100", count=8).usd_per_hour == pytest.approx(
        8 * DEFAULT_USD_PER_HOUR["nvidia-h100"]
    )
    assert set(DEFAULT_USD_PER_HOUR) == set(DEFAULT_TDP_WATTS)
    with pytest.raises(ValueError):
        HourlyCost(-1)


def test_two_overlapping_requests_split_the_overlap() -> None:
    clock = FakeClock()
    meter = EngineTimeMeter(clock)
    first = meter.start("r")  # t=0
    clock.now = 2
    second = meter.start("r")  # t=2: [2, 6) is shared
    clock.now = 6
    a = meter.finish(first)
    clock.now = 8
    b = meter.finish(second)
    assert (a.wall_seconds, a.share_seconds) == (6, 2 + 4 / 2)
    assert (b.wall_seconds, b.share_seconds) == (6, 4 / 2 + 2)
    assert a.share_seconds + b.share_seconds == meter.busy_seconds("r") == 8
    rate = HourlyCost(3.6).usd_per_second()  # $0.001/s
    assert cost_for_request(rate, a.wall_seconds, a.concurrent_share) == pytest.approx(0.004)
    assert cost_for_request(rate, b.wall_seconds, b.concurrent_share) == pytest.approx(0.004)
    assert meter.finish(first) is a  # finishing twice changes nothing
    assert meter.busy_seconds("r") == 8


def test_idle_time_and_other_runners_are_not_charged() -> None:
    clock = FakeClock()
    meter = EngineTimeMeter(clock)
    clock.now = 10
    solo = meter.start("r1")
    other = meter.start("r2")
    clock.now = 13
    assert meter.finish(solo).share_seconds == 3
    assert meter.finish(other).concurrent_share == 1.0
    clock.now = 100
    assert meter.busy_seconds("r1") == 3
    assert meter.busy_seconds("unknown") == 0.0


def test_three_way_share() -> None:
    clock = FakeClock()
    meter = EngineTimeMeter(clock)
    spans = [meter.start("r") for _ in range(3)]
    clock.now = 3
    shares = [meter.finish(s) for s in spans]
    assert [s.share_seconds for s in shares] == [1, 1, 1]
    assert shares[0].concurrent_share == pytest.approx(1 / 3)


def test_cost_for_request_validates() -> None:
    assert cost_for_request(0.01, 10) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        cost_for_request(0.01, 10, 1.5)


def test_expected_cost() -> None:
    runner = HourlyCost(36.0)  # $0.01/s
    # 1000 prompt tokens at 1000 tok/s prefill + 100 output at 50 tok/s = 3 s.
    cost = expected_cost(runner, 1000, 100, 50, prefill_tokens_per_second=1000)
    assert cost == pytest.approx(0.03)
    # Default prefill is 10x decode (500 tok/s): 2 s + 2 s; shared by 4: a quarter.
    assert expected_cost(runner, 1000, 100, 50, concurrency=4) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        expected_cost(runner, 1, 1, 0)


def test_power_cost_from_measured_watts_and_fallback() -> None:
    clock = FakeClock()
    readings: list[float | None] = [1000.0, None]
    cost = PowerCost(lambda: readings.pop(0), 0.36, fallback_watts=400, pue=1.5, clock=clock)
    # 1 kW x 1.5 PUE x $0.36/kWh = $0.54/h
    assert cost.usd_per_second() == pytest.approx(0.54 / 3600)
    assert cost.describe()["measured"] is True
    assert cost.usd_per_second() == pytest.approx(0.54 / 3600)  # cached within refresh_s
    clock.now = 10
    assert cost.watts() == 400  # unreadable now: the TDP-style fallback
    assert cost.describe() == {
        "kind": "power",
        "usd_per_kwh": 0.36,
        "pue": 1.5,
        "watts": 400,
        "measured": False,
    }
    with pytest.raises(RuntimeError):
        PowerCost(lambda: None, 0.36).usd_per_second()


class FakeNvml:
    """Speaks the part of pynvml's API (and its names) that the reader uses."""

    class NVMLError(Exception):
        pass

    def __init__(self, milliwatts: list[int], broken: bool = False) -> None:
        self.milliwatts = milliwatts
        self.broken = broken

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if self.broken:
            raise self.NVMLError("GPU is lost")
        return index

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self.milliwatts[int(handle)]


def test_nvml_reader_sums_gpus_and_reports_failure_as_none() -> None:
    assert NvmlPowerReader(FakeNvml([250_000, 300_500]), [0, 1])() == pytest.approx(550.5)
    assert NvmlPowerReader(FakeNvml([1], broken=True), [0])() is None


def write_zone(root: Path, name: str, energy_uj: int, max_range: int = 1_000_000_000) -> None:
    zone = root / name
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")


def test_rapl_reader_averages_packages_and_handles_wrap(tmp_path: Path) -> None:
    clock = FakeClock()
    reader = RaplPowerReader(tmp_path, clock=clock)
    write_zone(tmp_path, "intel-rapl:0", 999_000_000)
    write_zone(tmp_path, "intel-rapl:1", 5_000_000)
    write_zone(tmp_path, "intel-rapl:0:0", 1)  # a sub-zone: inside package 0
    assert reader() is None  # the first call has nothing to compare with
    clock.now = 2
    write_zone(tmp_path, "intel-rapl:0", 19_000_000)  # wrapped: +20 J
    write_zone(tmp_path, "intel-rapl:1", 65_000_000)  # +60 J
    write_zone(tmp_path, "intel-rapl:0:0", 999_999)
    assert reader() == pytest.approx(80 / 2)


def test_rapl_reader_unreadable(tmp_path: Path) -> None:
    assert RaplPowerReader(tmp_path / "missing")() is None
    (tmp_path / "intel-rapl:0").mkdir()  # energy_uj missing, as when root-only
    reader = RaplPowerReader(tmp_path, clock=FakeClock())
    assert reader() is None
    assert reader() is None


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (utc(2025, 1, 31, 23, 59, 59), utc(2025, 1, 1), utc(2025, 2, 1)),
        (utc(2025, 2, 1), utc(2025, 2, 1), utc(2025, 3, 1)),
        (utc(2024, 2, 29, 12), utc(2024, 2, 1), utc(2024, 3, 1)),  # leap year
        (utc(2025, 2, 28, 12), utc(2025, 2, 1), utc(2025, 3, 1)),
        (utc(2025, 12, 31, 23, 59, 59), utc(2025, 12, 1), utc(2026, 1, 1)),
        (utc(2025, 4, 30, 8), utc(2025, 4, 1), utc(2025, 5, 1)),
    ],
)
def test_month_periods(now: datetime, start: datetime, end: datetime) -> None:
    window = BudgetWindow("month")
    assert window.start(now) == start
    assert window.end(now) == end
    assert window.seconds_until_reset(now) == (end - now).total_seconds()


def test_month_period_is_computed_in_utc() -> None:
    # 01:00 on 1 March in UTC+2 is still February in UTC.
    now = datetime(2024, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert BudgetWindow("month").start(now) == utc(2024, 2, 1)
    with pytest.raises(ValueError, match="timezone"):
        BudgetWindow("month").start(datetime(2024, 3, 1))


def test_day_and_week_periods() -> None:
    sunday = utc(2025, 3, 2, 18, 30)
    assert BudgetWindow("day").start(sunday) == utc(2025, 3, 2)
    assert BudgetWindow("day").end(sunday) == utc(2025, 3, 3)
    assert BudgetWindow("week").start(sunday) == utc(2025, 2, 24)  # Monday
    assert BudgetWindow("week").end(sunday) == utc(2025, 3, 3)
    with pytest.raises(ValueError):
        BudgetWindow("year")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spent", "amount", "state"),
    [
        (0.0, 10.0, BudgetState.OK),
        (7.99, 10.0, BudgetState.OK),
        (8.0, 10.0, BudgetState.SOFT),
        (9.99, 10.0, BudgetState.SOFT),
        (10.0, 10.0, BudgetState.EXCEEDED),
        (12.0, 10.0, BudgetState.EXCEEDED),
        (0.0, 0.0, BudgetState.EXCEEDED),
    ],
)
def test_check_budget(spent: float, amount: float, state: BudgetState) -> None:
    assert check_budget(spent, amount, soft_threshold=0.8) is state


def test_check_budget_validates() -> None:
    with pytest.raises(ValueError):
        check_budget(1, 10, soft_threshold=0)
    assert BudgetState.EXCEEDED.value == "exceeded"
