"""What this machine has: CPU, RAM, OS and GPUs, as one JSON-serialisable report.

Each probe is a small object passed into :func:`detect`, so tests swap in
honest fakes (``tests/runner/fakes.py``) instead of patching. A probe whose
library or driver is missing, or which raises for any reason, makes its
hardware read as "not present" with the reason recorded: a runner on a
machine with a broken NVIDIA driver must still come up and serve on CPU.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import psutil

from outpost.sdk.hardware import CpuInfo, GpuInfo, HardwareReport, ProbeStatus

__all__ = [
    "AmdProbe",
    "AppleProbe",
    "CpuInfo",
    "CpuProbe",
    "GpuInfo",
    "GpuProbe",
    "HardwareReport",
    "NvidiaProbe",
    "ProbeStatus",
    "Probes",
    "SystemCpuProbe",
    "default_probes",
    "detect",
    "parse_cpuinfo",
]

#: ISA extensions that change which llama.cpp kernels run (or whether a build runs at all).
_X86_FEATURES = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
#: Linux names ARM features differently from the ISA manuals; map them to the usual names.
_ARM_FEATURES = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "sve": "sve",
    "sve2": "sve2",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "asimdhp": "fp16",
}


class CpuProbe(Protocol):
    def probe(self) -> CpuInfo: ...


class GpuProbe(Protocol):
    name: str

    def probe(self) -> list[GpuInfo]:
        """The GPUs found; raise (any exception) when the library or driver is unusable."""
        ...


# --- CPU -------------------------------------------------------------------


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """CPU model name and ISA features of interest from Linux ``/proc/cpuinfo``."""
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    features = [name for name in _X86_FEATURES if name in flags]
    features += sorted({arm for raw, arm in _ARM_FEATURES.items() if raw in flags})
    return model, features


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _run_command(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=5, check=True).stdout


@dataclass
class SystemCpuProbe:
    """Reads the real host: ``/proc/cpuinfo`` and cgroups on Linux, sysctl on macOS."""

    proc: Path = Path("/proc/cpuinfo")
    cgroup: Path = Path("/sys/fs/cgroup")
    run: Callable[[list[str]], str] = field(default=_run_command)

    def probe(self) -> CpuInfo:
        system, machine = platform.system(), platform.machine()
        model: str | None = None
        features: list[str] = []
        if self.proc.exists():
            model, features = parse_cpuinfo(self.proc.read_text(errors="replace"))
        elif system == "Darwin":
            model, features = self._darwin()
        memory = psutil.virtual_memory()
        total, available = memory.total, memory.available
        # Containers see the host's RAM through psutil; the cgroup limit is what
        # the kernel will actually let this runner and its engine use.
        limit = _read_int(self.cgroup / "memory.max") or _read_int(
            self.cgroup / "memory" / "memory.limit_in_bytes"
        )
        if limit is not None and limit < total:
            used = (
                _read_int(self.cgroup / "memory.current")
                or _read_int(self.cgroup / "memory" / "memory.usage_in_bytes")
                or 0
            )
            total, available = limit, max(0, min(available, limit - used))
        logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return CpuInfo(
            model=model or platform.processor() or machine or "unknown",
            arch=machine,
            os=platform.platform(),
            physical_cores=psutil.cpu_count(logical=False),
            logical_cores=logical or psutil.cpu_count() or 1,
            ram_total_bytes=total,
            ram_available_bytes=available,
            features=features,
        )

    def _darwin(self) -> tuple[str | None, list[str]]:
        model = self.run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip() or None
        features = []
        if platform.machine() == "arm64":
            features.append("neon")  # every Apple Silicon core has Advanced SIMD
            for flag, name in (
                ("FEAT_DotProd", "dotprod"),
                ("FEAT_I8MM", "i8mm"),
                ("FEAT_BF16", "bf16"),
            ):
                out = self.run(["sysctl", "-n", f"hw.optional.arm.{flag}"]).strip()
                if out == "1":
                    features.append(name)
        else:
            # macOS spells them "AVX512VNNI", "AVX1.0": compare without separators.
            out = self.run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"])
            flags = {f.lower().replace("1.0", "").replace("_", "") for f in out.split()}
            features = [name for name in _X86_FEATURES if name.replace("_", "") in flags]
        return model, features


# --- GPUs ------------------------------------------------------------------


def _optional(call: Callable[[], Any]) -> Any:
    """One NVML/amdsmi field a GPU may not support (power on some boards, MIG on most)."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - each library raises its own error types
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _import(name: str) -> Callable[[], ModuleType]:
    def load() -> ModuleType:
        import importlib

        return importlib.import_module(name)

    return load


@dataclass
class NvidiaProbe:
    """NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py)."""

    load: Callable[[], ModuleType] = field(default=_import("pynvml"))
    name: str = "nvidia"

    def probe(self) -> list[GpuInfo]:
        nvml = self.load()
        nvml.nvmlInit()
        try:
            driver = _optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
            return [self._device(nvml, i, driver) for i in range(nvml.nvmlDeviceGetCount())]
        finally:
            nvml.nvmlShutdown()

    @staticmethod
    def _device(nvml: Any, index: int, driver: str | None) -> GpuInfo:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        cc = _optional(lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
        draw = _optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))  # milliwatts
        limit = _optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        util = _optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        mig = _optional(lambda: nvml.nvmlDeviceGetMigMode(handle)[0])
        return GpuInfo(
            vendor="nvidia",
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_optional(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
            memory_total_bytes=int(memory.total),
            memory_free_bytes=int(memory.free),
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
            driver_version=driver,
            power_draw_watts=draw / 1000 if draw is not None else None,
            power_limit_watts=limit / 1000 if limit is not None else None,
            utilization_percent=float(util) if util is not None else None,
            mig_enabled=bool(mig) if mig is not None else None,
        )


@dataclass
class AmdProbe:
    """AMD GPUs through ``amdsmi`` (ships with ROCm; absent elsewhere)."""

    load: Callable[[], ModuleType] = field(default=_import("amdsmi"))
    name: str = "amd"

    def probe(self) -> list[GpuInfo]:
        smi = self.load()
        smi.amdsmi_init()
        try:
            return [
                self._device(smi, i, h) for i, h in enumerate(smi.amdsmi_get_processor_handles())
            ]
        finally:
            smi.amdsmi_shut_down()

    @staticmethod
    def _device(smi: Any, index: int, handle: Any) -> GpuInfo:
        vram = smi.AmdSmiMemoryType.VRAM
        total = int(smi.amdsmi_get_gpu_memory_total(handle, vram))
        used = int(smi.amdsmi_get_gpu_memory_usage(handle, vram))
        asic = _optional(lambda: smi.amdsmi_get_gpu_asic_info(handle)) or {}
        power = _optional(lambda: smi.amdsmi_get_power_info(handle)) or {}
        draw = power.get("current_socket_power") or power.get("average_socket_power")
        activity = _optional(lambda: smi.amdsmi_get_gpu_activity(handle)) or {}
        driver = _optional(lambda: smi.amdsmi_get_gpu_driver_info(handle)) or {}
        return GpuInfo(
            vendor="amd",
            index=index,
            name=str(asic.get("market_name") or "AMD GPU"),
            uuid=_optional(lambda: smi.amdsmi_get_gpu_device_uuid(handle)),
            memory_total_bytes=total,
            memory_free_bytes=max(0, total - used),
            compute_capability=asic.get("target_graphics_version"),
            driver_version=driver.get("driver_version"),
            power_draw_watts=_number(draw),
            power_limit_watts=_number(power.get("power_limit")),
            utilization_percent=_number(activity.get("gfx_activity")),
        )


def _number(value: Any) -> float | None:
    """amdsmi writes "N/A" for fields a board does not report.

    A reading outside the hello's bounds (NaN, negative, absurd: sdk/hardware.py) is
    unreported too, so an odd sensor never costs the runner its GPU.
    """
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and 0.0 <= number <= 1e6 else None


@dataclass
class AppleProbe:
    """Apple Silicon's GPU, best effort: no public API reports its live use."""

    run: Callable[[list[str]], str] = field(default=_run_command)
    system: Callable[[], tuple[str, str]] = field(
        default=lambda: (platform.system(), platform.machine())
    )
    available_ram: Callable[[], int] = field(default=lambda: psutil.virtual_memory().available)
    name: str = "apple"

    def probe(self) -> list[GpuInfo]:
        system, machine = self.system()
        if (system, machine) != ("Darwin", "arm64"):
            return []
        chip = self.run(["sysctl", "-n", "machdep.cpu.brand_string"]).strip() or "Apple Silicon"
        total = int(self.run(["sysctl", "-n", "hw.memsize"]).strip())
        return [
            GpuInfo(
                vendor="apple",
                index=0,
                name=chip,
                memory_total_bytes=total,
                memory_free_bytes=min(total, self.available_ram()),
                unified_memory=True,
            )
        ]


# --- detection -------------------------------------------------------------


@dataclass(frozen=True)
class Probes:
    cpu: CpuProbe
    gpus: tuple[GpuProbe, ...] = ()


def default_probes() -> Probes:
    return Probes(cpu=SystemCpuProbe(), gpus=(NvidiaProbe(), AmdProbe(), AppleProbe()))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")[:1024]  # the hello's bound (sdk/hardware.py)


def detect(probes: Probes | None = None) -> HardwareReport:
    """Run every probe; a failing probe is recorded as "not present", never raised."""
    probes = probes if probes is not None else default_probes()
    statuses: list[ProbeStatus] = []
    try:
        cpu = probes.cpu.probe()
        statuses.append(ProbeStatus(name="cpu", present=True, devices=1))
    except Exception as exc:  # noqa: BLE001 - a broken probe must not stop the runner
        cpu = CpuInfo.unknown()
        statuses.append(ProbeStatus(name="cpu", present=False, reason=_reason(exc)))
    gpus: list[GpuInfo] = []
    for gpu_probe in probes.gpus:
        try:
            found = gpu_probe.probe()
        except Exception as exc:  # noqa: BLE001 - missing library, driver or device
            statuses.append(ProbeStatus(name=gpu_probe.name, present=False, reason=_reason(exc)))
            continue
        gpus.extend(found)
        statuses.append(
            ProbeStatus(
                name=gpu_probe.name,
                present=bool(found),
                devices=len(found),
                reason=None if found else "no devices found",
            )
        )
    return HardwareReport(cpu=cpu, gpus=gpus, probes=statuses)
