"""Detection: the real machine, honest fakes, and the failure paths."""

from __future__ import annotations

import json
from pathlib import Path

from outpost.runner.hardware import (
    AmdProbe,
    AppleProbe,
    NvidiaProbe,
    Probes,
    SystemCpuProbe,
    detect,
    parse_cpuinfo,
)
from tests.runner.fakes import (
    GIB,
    FakeCpuProbe,
    FakeNvidiaProbe,
    FakeNvml,
    RaisingProbe,
    cpu,
    nvidia_gpu,
)

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni \
avx512_bf16 amx_tile amx_bf16 amx_int8
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


def test_real_machine_detects_sane_values_and_no_nvidia_gpu() -> None:
    report = detect()
    assert report.cpu.logical_cores >= 1
    assert 0 < report.cpu.ram_available_bytes <= report.cpu.ram_total_bytes
    assert report.cpu.os and report.cpu.arch
    assert report.gpus_of("nvidia") == []
    nvidia = next(p for p in report.probes if p.name == "nvidia")
    assert not nvidia.present and nvidia.reason  # no driver here: a reason, not a crash
    assert json.loads(report.to_json())["cpu"]["logical_cores"] == report.cpu.logical_cores


def test_a_raising_probe_reads_as_not_present_with_its_reason() -> None:
    report = detect(Probes(cpu=FakeCpuProbe(cpu()), gpus=(
        RaisingProbe(RuntimeError("NVML Shared Library Not Found")),
        RaisingProbe(ModuleNotFoundError("No module named 'amdsmi'"), name="amd"),
    )))  # fmt: skip
    assert report.gpus == []
    by_name = {p.name: p for p in report.probes}
    assert not by_name["nvidia"].present
    assert by_name["nvidia"].reason == "RuntimeError: NVML Shared Library Not Found"
    assert by_name["amd"].reason == "ModuleNotFoundError: No module named 'amdsmi'"
    assert by_name["cpu"].present


def test_a_failing_cpu_probe_still_yields_a_report() -> None:
    report = detect(Probes(cpu=RaisingProbe(OSError("no /proc"), name="cpu")))  # type: ignore[arg-type]
    assert report.cpu.model == "unknown" and report.cpu.ram_available_bytes == 0
    assert report.probes[0].reason == "OSError: no /proc"


def test_fake_gpus_are_reported_with_their_probe() -> None:
    report = detect(Probes(cpu=FakeCpuProbe(cpu()), gpus=(FakeNvidiaProbe([nvidia_gpu(0)]),)))
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert report.probes[1].present and report.probes[1].devices == 1
    assert report.to_dict()["gpus"][0]["memory_total_bytes"] == 81559 * 1024**2


def test_nvidia_probe_maps_nvml_fields() -> None:
    nvml = FakeNvml(devices=[
        {"name": b"NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "total": 80 * GIB, "free": 70 * GIB,
         "cc": (9, 0), "power_mw": 71_000, "limit_mw": 700_000, "util": 13, "mig": 0},
        {"name": "NVIDIA GeForce RTX 4090", "uuid": "GPU-2", "total": 24 * GIB, "free": 23 * GIB,
         "cc": (8, 9), "power_mw": 30_500, "limit_mw": 450_000, "util": 0, "mig": None},
    ])  # fmt: skip
    gpus = NvidiaProbe(load=lambda: nvml).probe()  # type: ignore[arg-type,return-value]
    assert nvml.calls == ["init", "shutdown"]
    h100, rtx = gpus
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.compute_capability == "9.0"
    assert h100.memory_free_bytes == 70 * GIB and h100.driver_version == "550.54.15"
    assert h100.power_draw_watts == 71.0 and h100.power_limit_watts == 700.0
    assert h100.utilization_percent == 13.0 and h100.mig_enabled is False
    assert rtx.index == 1 and rtx.mig_enabled is None  # "Not Supported" is not an error


def test_nvidia_probe_shuts_nvml_down_when_a_device_fails() -> None:
    nvml = FakeNvml(devices=[{"name": "broken"}])  # no memory info: KeyError mid-probe
    report = detect(Probes(cpu=FakeCpuProbe(cpu()), gpus=(NvidiaProbe(load=lambda: nvml),)))  # type: ignore[arg-type]
    assert nvml.calls == ["init", "shutdown"]
    assert not report.probes[1].present and "KeyError" in (report.probes[1].reason or "")


def test_cpuinfo_x86_and_arm_features() -> None:
    model, features = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"} <= set(features)
    model, features = parse_cpuinfo(ARM_CPUINFO)
    assert model is None
    assert {"neon", "dotprod", "sve", "i8mm", "bf16", "fp16"} <= set(features)


def test_system_cpu_probe_applies_a_cgroup_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(X86_CPUINFO)
    (tmp_path / "memory.max").write_text(f"{GIB}\n")
    (tmp_path / "memory.current").write_text(f"{GIB // 4}\n")
    info = SystemCpuProbe(proc=tmp_path / "cpuinfo", cgroup=tmp_path).probe()
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.ram_total_bytes == GIB
    assert info.ram_available_bytes <= GIB - GIB // 4


def test_system_cpu_probe_ignores_an_unlimited_cgroup(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    info = SystemCpuProbe(proc=tmp_path / "absent", cgroup=tmp_path).probe()
    assert info.ram_total_bytes > GIB // 2


def test_apple_probe_reads_sysctl_on_apple_silicon_only() -> None:
    answers = {"machdep.cpu.brand_string": "Apple M2 Max\n", "hw.memsize": f"{64 * GIB}\n"}
    probe = AppleProbe(run=lambda argv: answers[argv[-1]], system=lambda: ("Darwin", "arm64"),
                       available_ram=lambda: 40 * GIB)  # fmt: skip
    (gpu,) = probe.probe()
    assert gpu.name == "Apple M2 Max" and gpu.unified_memory
    assert gpu.memory_total_bytes == 64 * GIB and gpu.memory_free_bytes == 40 * GIB
    linux = AppleProbe(run=lambda argv: "", system=lambda: ("Linux", "x86_64"))
    assert linux.probe() == []


def test_an_amd_sensor_outside_the_hello_bounds_reads_as_unreported() -> None:
    # An honest fake of the part of amdsmi the probe calls: a board whose power sensor says NaN and
    # whose activity is negative must still be found (the hello refuses such numbers,
    # sdk/hardware.py).
    import types

    smi = types.SimpleNamespace(
        AmdSmiMemoryType=types.SimpleNamespace(VRAM=0),
        amdsmi_init=lambda: None,
        amdsmi_shut_down=lambda: None,
        amdsmi_get_processor_handles=lambda: ["h0"],
        amdsmi_get_gpu_memory_total=lambda h, t: 192 * 2**30,
        amdsmi_get_gpu_memory_usage=lambda h, t: 2**30,
        amdsmi_get_gpu_asic_info=lambda h: {
            "market_name": "AMD Instinct MI300X",
            "target_graphics_version": "gfx942",
        },
        amdsmi_get_power_info=lambda h: {"current_socket_power": "nan", "power_limit": 750},
        amdsmi_get_gpu_activity=lambda h: {"gfx_activity": -1},
        amdsmi_get_gpu_driver_info=lambda h: {"driver_version": "6.8.5"},
        amdsmi_get_gpu_device_uuid=lambda h: "GPU-amd-0",
    )
    (gpu,) = AmdProbe(load=lambda: smi).probe()  # type: ignore[arg-type,return-value] # a fake module
    assert (
        gpu.power_draw_watts is None
        and gpu.utilization_percent is None
        and gpu.power_limit_watts == 750.0
    )
