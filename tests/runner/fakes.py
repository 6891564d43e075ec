"""Honest fakes for the runner's hardware probes: they return what they are given,
or raise what they are given, and do nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from outpost.runner.hardware import CpuInfo, GpuInfo, Probes

GIB = 1024**3
MIB = 1024**2


@dataclass
class FakeCpuProbe:
    info: CpuInfo

    def probe(self) -> CpuInfo:
        return self.info


@dataclass
class FakeNvidiaProbe:
    gpus: list[GpuInfo]
    name: str = "nvidia"

    def probe(self) -> list[GpuInfo]:
        return list(self.gpus)


@dataclass
class FakeAmdProbe(FakeNvidiaProbe):
    name: str = "amd"


@dataclass
class RaisingProbe:
    """A probe whose library or driver fails, e.g. NVML without a driver."""

    error: Exception
    name: str = "nvidia"

    def probe(self) -> Any:
        raise self.error


def cpu(cores: int = 2, ram_gib: float = 24, features: tuple[str, ...] = ("avx2",)) -> CpuInfo:
    ram = int(ram_gib * GIB)
    return CpuInfo(model="Fake CPU", arch="x86_64", os="Linux-fake", physical_cores=cores,
                   logical_cores=cores, ram_total_bytes=ram, ram_available_bytes=ram - GIB,
                   features=list(features))  # fmt: skip


def nvidia_gpu(
    index: int = 0,
    name: str = "NVIDIA H100 80GB HBM3",
    total_mib: int = 81559,
    # fmt: skip
    used_mib: int = 0,
    cc: str = "9.0",
    mig: bool | None = False,
) -> GpuInfo:
    """Defaults as NVML reports an idle H100 80GB (81559 MiB, not 80 GiB)."""
    return GpuInfo(vendor="nvidia", index=index, name=name, uuid=f"GPU-fake-{index}",
                   memory_total_bytes=total_mib * MIB,
                   memory_free_bytes=(total_mib - used_mib) * MIB, compute_capability=cc,
                   driver_version="550.54.15", power_draw_watts=71.0, power_limit_watts=700.0,
                   utilization_percent=0.0, mig_enabled=mig)  # fmt: skip


def rtx4090(index: int = 0) -> GpuInfo:
    return nvidia_gpu(index, "NVIDIA GeForce RTX 4090", total_mib=24564, used_mib=420, cc="8.9",
                      mig=None)  # fmt: skip


def probes(cpu_info: CpuInfo | None = None, gpus: list[GpuInfo] | None = None) -> Probes:
    return Probes(cpu=FakeCpuProbe(cpu_info or cpu()), gpus=(FakeNvidiaProbe(gpus or []),))


# --- a fake of the pynvml module, for NvidiaProbe's own mapping -------------


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeNvml:
    """The handful of pynvml functions NvidiaProbe calls (keeping pynvml's camelCase
    names), over a list of device dicts."""

    devices: list[dict[str, Any]]
    driver: bytes = b"550.54.15"
    calls: list[str] = field(default_factory=list)

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.devices[i]

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> Any:
        return h["name"]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return h["uuid"]

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(total=h["total"], free=h["free"], used=h["total"] - h["free"])

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        return h["cc"]

    def nvmlDeviceGetPowerUsage(self, h: dict[str, Any]) -> int:
        return h["power_mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, h: dict[str, Any]) -> int:
        return h["limit_mw"]

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> SimpleNamespace:
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetMigMode(self, h: dict[str, Any]) -> tuple[int, int]:
        if h.get("mig") is None:
            raise FakeNvmlError("Not Supported")  # as NVML answers on consumer boards
        return (h["mig"], h["mig"])
