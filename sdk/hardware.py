"""What a runner's machine has (CPU, RAM, OS, GPUs): the report its hello carries.

The runner fills it (``runner/hardware.py`` holds the probes); the control
plane stores and shows it. A runner is untrusted, so every string and list is
bounded and every number is an exact integer or a finite float within a range
far above any real machine's (docs/protocol.md, "Bounds").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CpuInfo", "GpuInfo", "HardwareReport", "ProbeStatus"]

#: Bytes, cores, indices: exact in a float (the console and JSON readers).
_MAX_COUNT = 2**53
_Count = Annotated[int, Field(strict=True, ge=0, le=_MAX_COUNT)]
_Text = Annotated[str, Field(max_length=256)]
_Feature = Annotated[str, Field(min_length=1, max_length=32)]
_Watts = Annotated[float, Field(strict=True, ge=0.0, le=1e6)]


class _Report(BaseModel):
    # A contract, not a bag: unknown fields refused, no NaN or infinity.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CpuInfo(_Report):
    """The host's CPU, system RAM and OS (one probe: they come from the same OS calls)."""

    model: _Text
    arch: _Text
    os: _Text
    physical_cores: _Count | None
    logical_cores: _Count
    ram_total_bytes: _Count
    ram_available_bytes: _Count
    features: list[_Feature] = Field(default_factory=list, max_length=64)

    @classmethod
    def unknown(cls) -> CpuInfo:
        """What the report holds when the CPU probe itself failed: nothing assumed."""
        return cls(
            model="unknown",
            arch="unknown",
            os="unknown",
            physical_cores=None,
            logical_cores=0,
            ram_total_bytes=0,
            ram_available_bytes=0,
        )


class GpuInfo(_Report):
    vendor: Literal["nvidia", "amd", "apple"]
    index: Annotated[int, Field(strict=True, ge=0, le=1024)]
    name: _Text
    uuid: _Text | None = None
    memory_total_bytes: _Count
    memory_free_bytes: _Count
    #: NVIDIA "major.minor" (vLLM needs >= 7.0); AMD gfx target such as "gfx942".
    compute_capability: Annotated[str, Field(max_length=32)] | None = None
    driver_version: Annotated[str, Field(max_length=64)] | None = None
    power_draw_watts: _Watts | None = None
    power_limit_watts: _Watts | None = None
    # Some drivers report above 100 (AMD's gfx_activity on a busy board); bounded, not clamped.
    utilization_percent: _Watts | None = None
    mig_enabled: Annotated[bool, Field(strict=True)] | None = None
    #: Apple Silicon shares system RAM with the GPU; its "VRAM" is the RAM.
    unified_memory: Annotated[bool, Field(strict=True)] = False


class ProbeStatus(_Report):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    present: Annotated[bool, Field(strict=True)]
    devices: Annotated[int, Field(strict=True, ge=0, le=1024)] = 0
    reason: Annotated[str, Field(max_length=1024)] | None = None


class HardwareReport(_Report):
    cpu: CpuInfo
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    probes: list[ProbeStatus] = Field(default_factory=list, max_length=16)

    def gpus_of(self, vendor: str) -> list[GpuInfo]:
        return [gpu for gpu in self.gpus if gpu.vendor == vendor]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, as the tunnel's hello frame carries them."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)
