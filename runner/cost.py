"""The runner's cost model, as its hello announces it (docs/cost.md, "The hello's cost").

Three ways, first match wins:

1. ``--usd-per-hour``: the operator's own figure (rent, or amortised purchase);
2. ``--usd-per-kwh``: electricity, watts x PUE x price. Watts are ``--watts``,
   else the hardware's *power limits* (NVML's enforced limit per NVIDIA GPU,
   RAPL's long-term limit PL1 per CPU package), else the class TDP. Limits
   rather than a reading of the draw: the hello goes out when the runner
   connects, with the engine idle, and an idle reading would make a loaded
   runner look nearly free;
3. neither: the default rate of its hardware class (``DEFAULT_USD_PER_HOUR``).

The tables, the hardware classes and the cost model live in ``sdk.pricing``,
the contract both ends import, so both read the same numbers.
"""

from __future__ import annotations

from pathlib import Path

from outpost.runner.settings import RunnerSettings
from outpost.sdk.hardware import GpuInfo, HardwareReport
from outpost.sdk.pricing import (
    DEFAULT_TDP_WATTS,
    DEFAULT_USD_PER_HOUR,
    HARDWARE_CLASSES,
    CostModel,
    HardwareClass,
    is_hardware_class,
)

__all__ = ["cost_model", "hardware_class", "power_limit_watts"]

_GIB = 1024**3
# Above this many logical CPUs a machine is priced as "cpu-large" (32 vCPU), below as "cpu-small" (2
# vCPU).
_LARGE_CPU = 16


def _gpu_class(gpu: GpuInfo) -> HardwareClass:
    name = gpu.name.upper()
    big = gpu.memory_total_bytes >= 60 * _GIB
    if "H200" in name:
        return "nvidia-h200"
    if "H100" in name or "H800" in name:
        return "nvidia-h100"
    if "A100" in name or "A800" in name:
        return "nvidia-a100-80gb" if big else "nvidia-a100-40gb"
    if name.split()[-1:] == ["L4"] or " L4 " in f" {name} ":
        return "nvidia-l4"
    # Unlisted cards (and AMD's) by memory: the listed class of the nearest size.
    if big:
        return "nvidia-a100-80gb"
    return "nvidia-a100-40gb" if gpu.memory_total_bytes >= 32 * _GIB else "nvidia-consumer-24gb"


def hardware_class(report: HardwareReport) -> tuple[HardwareClass, int]:
    """The cost class of the machine and how many units of it (GPUs, or 1 machine)."""
    gpus = [g for g in report.gpus if g.vendor in ("nvidia", "amd")]
    if gpus:
        return _gpu_class(gpus[0]), len(gpus)
    return ("cpu-large" if report.cpu.logical_cores > _LARGE_CPU else "cpu-small"), 1


def power_limit_watts(
    report: HardwareReport, powercap: Path = Path("/sys/class/powercap")
) -> tuple[float, str] | None:
    """Summed power limits of the GPUs (NVML) or CPU packages (RAPL PL1), with the source's name."""
    gpus = [g for g in report.gpus if g.vendor in ("nvidia", "amd")]
    if gpus:
        limits = [g.power_limit_watts for g in gpus]
        if all(w is not None and w > 0 for w in limits):
            return float(sum(w for w in limits if w is not None)), "gpu-power-limit"
        return None
    total = 0.0
    for zone in sorted(powercap.glob("intel-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, uncore, dram) are inside the package
            continue
        try:
            total += int((zone / "constraint_0_power_limit_uw").read_text().strip()) / 1e6
        except (OSError, ValueError):
            return None
    return (total, "rapl-pl1") if total > 0 else None


def cost_model(
    settings: RunnerSettings, report: HardwareReport, powercap: Path = Path("/sys/class/powercap")
) -> CostModel:
    """The ``cost`` of the hello; the control plane turns it into $/hour
    (``sdk.pricing.hourly_rate``)."""
    detected, count = hardware_class(report)
    cls = settings.hardware_class or detected
    if not is_hardware_class(cls):
        raise ValueError(f"unknown hardware class {cls!r}; one of: {', '.join(HARDWARE_CLASSES)}")
    if settings.usd_per_hour is not None:
        return CostModel(
            kind="hourly",
            usd_per_hour=settings.usd_per_hour,
            source="configured",
            hardware_class=cls,
            count=count,
        )
    if settings.usd_per_kwh is not None:
        if settings.watts is not None:
            watts, source = settings.watts, "configured"
        elif (limit := power_limit_watts(report, powercap)) is not None:
            watts, source = limit
        else:
            watts, source = DEFAULT_TDP_WATTS[cls] * count, "tdp"
        return CostModel(
            kind="power",
            usd_per_kwh=settings.usd_per_kwh,
            pue=settings.pue,
            watts=watts,
            watts_source=source,
            hardware_class=cls,
            count=count,
        )
    return CostModel(
        kind="hourly",
        usd_per_hour=DEFAULT_USD_PER_HOUR[cls] * count,
        source="default",
        hardware_class=cls,
        count=count,
    )
