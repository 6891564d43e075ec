"""``runner detect`` and ``runner plan`` output, through the plain functions."""

from __future__ import annotations

import io
import json

from rich.console import Console

from outpost.runner.hardware import Probes
from outpost.runner.inspect_cli import detect_command, plan_command
from tests.runner.fakes import FakeCpuProbe, RaisingProbe, cpu, nvidia_gpu, probes

ALL = {"xllamacpp", "llama-cpp-python", "vllm"}


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, color_system=None), out


def test_detect_json_on_this_machine() -> None:
    console, out = _console()
    assert detect_command(True, console=console) == 0
    data = json.loads(out.getvalue())
    assert data["cpu"]["logical_cores"] >= 1
    assert {p["name"] for p in data["probes"]} >= {"cpu", "nvidia", "amd", "apple"}


def test_detect_table_shows_gpus_and_why_probes_failed() -> None:
    console, out = _console()
    fake = Probes(cpu=FakeCpuProbe(cpu()), gpus=(
        RaisingProbe(RuntimeError("driver [mismatch]"), name="amd"),
        probes(gpus=[nvidia_gpu()]).gpus[0],
    ))  # fmt: skip
    detect_command(False, probes=fake, console=console)
    text = out.getvalue()
    assert "NVIDIA H100 80GB HBM3" in text and "9.0" in text
    assert "RuntimeError: driver [mismatch]" in text  # markup-like text printed as is


def test_plan_default_model_on_cpu() -> None:
    console, out = _console()
    assert plan_command(None, None, False, probes=probes(), installed=ALL, console=console) == 0
    text = out.getvalue()
    assert "xllamacpp" in text and "smollm2-135m-instruct" in text
    assert "Memory fit" in text and "Rejected alternatives" in text


def test_plan_json_and_refusal_exit_status() -> None:
    console, out = _console()
    code = plan_command("meta-llama/Llama-3.1-8B-Instruct", None, True, probes=probes(),
                        installed=ALL, console=console)  # fmt: skip
    assert code == 1
    data = json.loads(out.getvalue())
    assert data["engine"] is None and "no NVIDIA GPU" in data["refusal"]


def test_plan_bad_input_exit_status() -> None:
    console, out = _console()
    assert plan_command("no/such-model", None, False, probes=probes(), console=console) == 2
    assert "not a known hub id" in out.getvalue()
    console, out = _console()
    assert plan_command(None, "tgi", False, probes=probes(), console=console) == 2
    assert "unknown engine" in out.getvalue()
