"""The runner's cost model in its hello: configured rate, power x price, class default."""

from __future__ import annotations

from pathlib import Path

import pytest

from outpost.control_plane.services.cost import DEFAULT_TDP_WATTS, DEFAULT_USD_PER_HOUR, hourly_rate
from outpost.runner.cost import cost_model, hardware_class
from outpost.runner.hardware import CpuInfo, GpuInfo, HardwareReport
from outpost.runner.settings import RunnerSettings

GIB = 1024**3


def cpu(cores: int) -> CpuInfo:
    return CpuInfo(
        model="x",
        arch="x86_64",
        os="Linux",
        physical_cores=cores,
        logical_cores=cores,
        ram_total_bytes=16 * GIB,
        ram_available_bytes=8 * GIB,
    )


def gpu(name: str, mem_gib: int, limit: float | None = None) -> GpuInfo:
    return GpuInfo(
        vendor="nvidia",
        index=0,
        name=name,
        memory_total_bytes=mem_gib * GIB,
        memory_free_bytes=mem_gib * GIB,
        power_limit_watts=limit,
    )


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (HardwareReport(cpu=cpu(2)), ("cpu-small", 1)),
        (HardwareReport(cpu=cpu(64)), ("cpu-large", 1)),
        (
            HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA H100 80GB HBM3", 80)] * 8),
            ("nvidia-h100", 8),
        ),
        (HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA H200", 141)]), ("nvidia-h200", 1)),
        (
            HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA A100-SXM4-40GB", 40)]),
            ("nvidia-a100-40gb", 1),
        ),
        (
            HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA A100-SXM4-80GB", 80)]),
            ("nvidia-a100-80gb", 1),
        ),
        (HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA L4", 24)]), ("nvidia-l4", 1)),
        (HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA L40S", 48)]), ("nvidia-a100-40gb", 1)),
        (
            HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA GeForce RTX 4090", 24)]),
            ("nvidia-consumer-24gb", 1),
        ),
    ],
)
def test_hardware_class(report: HardwareReport, expected: tuple[str, int]) -> None:
    assert hardware_class(report) == expected


def test_default_configured_and_power(tmp_path: Path) -> None:
    h100s = HardwareReport(cpu=cpu(8), gpus=[gpu("NVIDIA H100", 80, limit=700.0)] * 2)
    default = cost_model(RunnerSettings(), h100s, tmp_path)
    assert (
        default.source == "default"
        and hourly_rate(default) == 2 * DEFAULT_USD_PER_HOUR["nvidia-h100"]
    )
    configured = cost_model(RunnerSettings(usd_per_hour=1.25), h100s, tmp_path)
    assert hourly_rate(configured) == 1.25
    power = cost_model(RunnerSettings(usd_per_kwh=0.20, pue=1.5), h100s, tmp_path)
    assert power.watts_source == "gpu-power-limit" and hourly_rate(power) == pytest.approx(
        1.4 * 1.5 * 0.20
    )
    metered = cost_model(RunnerSettings(usd_per_kwh=0.20, watts=900), h100s, tmp_path)
    assert hourly_rate(metered) == pytest.approx(0.9 * 0.20)


def test_cpu_power_from_rapl_limit_else_tdp(tmp_path: Path) -> None:
    laptop = HardwareReport(cpu=cpu(4))
    settings = RunnerSettings(usd_per_kwh=0.30)
    tdp = cost_model(settings, laptop, tmp_path)
    assert tdp.watts_source == "tdp" and tdp.watts == DEFAULT_TDP_WATTS["cpu-small"]
    for zone, uw in (
        ("intel-rapl:0", 45_000_000),
        ("intel-rapl:1", 45_000_000),
        ("intel-rapl:0:0", 9),
    ):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "constraint_0_power_limit_uw").write_text(f"{uw}\n")
    rapl = cost_model(settings, laptop, tmp_path)
    assert rapl.watts_source == "rapl-pl1" and rapl.watts == 90.0


def test_hardware_class_override_is_checked() -> None:
    report = HardwareReport(cpu=cpu(2))
    assert cost_model(RunnerSettings(hardware_class="nvidia-l4"), report).usd_per_hour == 0.80
    with pytest.raises(ValueError, match="unknown hardware class"):
        cost_model(RunnerSettings(hardware_class="quantum"), report)
