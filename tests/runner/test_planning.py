"""Engine selection: each DESIGN.md rule, on injected hardware, asserted end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from outpost.runner.gguf_meta import lookup_known, read_gguf
from outpost.runner.hardware import detect
from outpost.runner.models import embedded_model_path
from outpost.runner.planning import (
    GIB,
    Overrides,
    Plan,
    VllmSettings,
    XllamacppSettings,
    plan,
)
from tests.runner.fakes import cpu, nvidia_gpu, probes, rtx4090
from tests.runner.models_fixtures import (
    LLAMA_31_8B_CONFIG,
    LLAMA_31_8B_SHARDS,
    gguf_spec,
    hf_dir,
)

ALL = {"xllamacpp", "llama-cpp-python", "vllm"}


def _reasons(result: Plan) -> dict[str, str]:
    return {r.engine: r.reason for r in result.rejected}


def test_cpu_only_machine_with_gguf_gets_xllamacpp() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    result = plan(hw, read_gguf(embedded_model_path()), installed={"xllamacpp"})
    assert result.engine == "xllamacpp" and result.refusal is None
    settings = result.settings
    assert isinstance(settings, XllamacppSettings)
    assert settings.gpu_layers == 0 and settings.threads == 2
    assert settings.slots == 4 and settings.ctx_per_slot == 4096 and result.capacity == 4
    assert "GGUF model" in result.rule and "on CPU" in result.rule
    fit = result.fit
    assert fit is not None and fit.fits and fit.where == "free RAM"
    assert fit.kv_bytes == 23040 * 4096 * 4
    assert "GGUF" in _reasons(result)["vllm"]
    assert "only when requested" in _reasons(result)["llama-cpp-python"]


def test_one_h100_with_an_8b_hf_model_and_vllm_gets_tp_1(tmp_path: Path) -> None:
    from outpost.runner.gguf_meta import read_hf_dir

    model = read_hf_dir(hf_dir(tmp_path, "Llama-3.1-8B-Instruct", LLAMA_31_8B_CONFIG,
                               LLAMA_31_8B_SHARDS))  # fmt: skip
    hw = detect(probes(cpu(cores=32, ram_gib=256), [nvidia_gpu(0)]))
    result = plan(hw, model, installed=ALL)
    assert result.engine == "vllm", result.refusal
    settings = result.settings
    assert isinstance(settings, VllmSettings)
    assert settings.tensor_parallel_size == 1 and settings.gpu_indices == [0]
    assert settings.gpu_memory_utilization == 0.90
    assert settings.max_model_len == 131072  # the full trained context fits
    assert settings.enable_prefix_caching and settings.quantization is None
    assert "tensor parallel 1" in result.rule
    assert result.fit is not None and result.fit.fits
    assert 1 < result.capacity <= 256
    assert "GGUF" in _reasons(result)["xllamacpp"]


def test_two_h100s_with_a_70b_hf_model_get_tp_2() -> None:
    model = lookup_known("meta-llama/Llama-3.1-70B-Instruct")
    assert model is not None
    hw = detect(probes(cpu(cores=64, ram_gib=512), [nvidia_gpu(0), nvidia_gpu(1)]))
    result = plan(hw, model, installed=ALL)
    assert result.engine == "vllm", result.refusal
    settings = result.settings
    assert isinstance(settings, VllmSettings)
    assert settings.tensor_parallel_size == 2 and settings.gpu_indices == [0, 1]
    fit = result.fit
    assert fit is not None and fit.weights_bytes == model.weights_bytes // 2
    # 132 GiB of bf16 weights cannot fit one 80 GB card; split in two they leave
    # room for tens of thousands of tokens of KV cache, not the full 128 K.
    assert 8192 <= settings.max_model_len < 131072
    assert settings.max_model_len % 256 == 0


def test_vllm_uses_the_gpus_with_most_free_memory() -> None:
    model = lookup_known("meta-llama/Llama-3.1-8B-Instruct")
    assert model is not None
    busy, idle = nvidia_gpu(0, used_mib=60_000), nvidia_gpu(1)
    result = plan(detect(probes(gpus=[busy, idle])), model, installed=ALL)
    assert isinstance(result.settings, VllmSettings)
    assert result.settings.gpu_indices == [1] and result.settings.gpu_memory_utilization == 0.9


def test_a_24gb_gpu_with_a_gguf_that_fits_gets_full_offload() -> None:
    model = gguf_spec("llama-3.1-8b-instruct", weights_bytes=4_920_733_984)  # Q4_K_M
    hw = detect(probes(cpu(cores=8, ram_gib=32), [rtx4090()]))
    result = plan(hw, model, installed=ALL)
    assert result.engine == "xllamacpp"
    settings = result.settings
    assert isinstance(settings, XllamacppSettings)
    assert settings.gpu_layers == model.layers + 1  # every layer plus the output layer
    assert settings.slots > 4  # a GPU batches more slots than a CPU
    assert result.fit is not None and "VRAM" in result.fit.where and result.fit.fits
    assert "offloaded" in result.rule
    assert "GGUF" in _reasons(result)["vllm"]


def test_a_gguf_too_big_for_the_gpu_runs_on_cpu_and_says_why() -> None:
    model = gguf_spec("llama-3.1-70b-instruct", weights_bytes=42_520_393_728)  # Q4_K_M
    hw = detect(probes(cpu(cores=32, ram_gib=128), [rtx4090()]))
    result = plan(hw, model, installed=ALL)
    assert result.engine == "xllamacpp"
    assert isinstance(result.settings, XllamacppSettings) and result.settings.gpu_layers == 0
    assert "does not fit the GPUs" in result.rule
    assert "needs" in _reasons(result)["xllamacpp (full GPU offload)"]


def test_a_model_too_large_for_anything_is_refused_with_the_shortfall() -> None:
    model = gguf_spec("llama-3.1-405b-instruct", weights_bytes=243 * GIB, layers=126)
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    result = plan(hw, model, installed=ALL)
    assert result.engine is None and result.settings is None and result.capacity == 0
    fit = next(r.fit for r in result.rejected if r.engine == "xllamacpp")
    assert fit is not None and not fit.fits
    shortfall = f"short by {fit.shortfall_bytes / GIB:.1f} GiB"
    assert result.refusal is not None and shortfall in result.refusal
    assert "llama-3.1-405b-instruct does not fit" in result.refusal
    assert fit.shortfall_bytes > 220 * GIB


def test_an_hf_model_too_large_for_the_gpus_names_the_per_gpu_shortfall() -> None:
    model = lookup_known("meta-llama/Llama-3.1-405B-Instruct")
    assert model is not None
    hw = detect(probes(gpus=[nvidia_gpu(0), nvidia_gpu(1)]))
    result = plan(hw, model, installed=ALL)
    assert result.refusal is not None and "short by" in result.refusal
    assert "TP 2" in result.refusal  # the largest tensor parallel size tried


def test_an_hf_model_without_a_gpu_or_vllm_explains_both() -> None:
    model = lookup_known("meta-llama/Llama-3.1-8B-Instruct")
    assert model is not None
    no_gpu = plan(detect(probes()), model, installed=ALL)
    assert no_gpu.refusal is not None and "no NVIDIA GPU detected" in no_gpu.refusal
    assert "GGUF" in no_gpu.refusal  # the way out: a GGUF file on llama.cpp
    no_vllm = plan(detect(probes(gpus=[nvidia_gpu()])), model, installed={"xllamacpp"})
    assert no_vllm.refusal is not None and "pip install 'vllm'" in no_vllm.refusal


def test_llama_cpp_python_only_when_requested_with_capacity_1() -> None:
    model = read_gguf(embedded_model_path())
    hw = detect(probes())
    assert plan(hw, model, installed=ALL).engine == "xllamacpp"
    result = plan(hw, model, engine="llama-cpp-python", installed=ALL)
    assert result.engine == "llama-cpp-python" and result.capacity == 1
    assert result.fit is not None and result.fit.slots == 1
    assert _reasons(result)["xllamacpp"] == "not requested (--engine llama-cpp-python)"
    missing = plan(hw, model, engine="llama-cpp-python", installed={"xllamacpp"})
    assert missing.refusal is not None and "llama-cpp-python" in missing.refusal
    assert "xllamacpp" not in missing.refusal  # skipped engines are not blamed


def test_attach_url_wins_without_a_model() -> None:
    result = plan(detect(probes()), None, attach_url="http://10.0.0.5:8000/v1", installed=set())
    assert result.engine == "attach" and result.capacity >= 1
    assert "--attach" in result.rule
    assert plan(detect(probes()), None, engine="attach", installed=set()).refusal


def test_overrides_are_kept_and_checked() -> None:
    model = read_gguf(embedded_model_path())
    result = plan(detect(probes()), model, installed=ALL, overrides=Overrides(parallel=2,
                  ctx=8192, threads=1))  # fmt: skip
    assert isinstance(result.settings, XllamacppSettings)
    assert (result.settings.slots, result.settings.ctx_per_slot) == (2, 4096)
    assert result.settings.threads == 1 and result.settings.ctx == 8192


def test_mig_enabled_gpus_are_not_planned() -> None:
    model = lookup_known("meta-llama/Llama-3.1-8B-Instruct")
    assert model is not None
    result = plan(detect(probes(gpus=[nvidia_gpu(mig=True)])), model, installed=ALL)
    assert result.refusal is not None and "MIG" in result.refusal


def test_unknown_engine_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        plan(detect(probes()), read_gguf(embedded_model_path()), engine="tgi", installed=ALL)


def test_plan_round_trips_through_json() -> None:
    result = plan(detect(probes()), read_gguf(embedded_model_path()), installed=ALL)
    data = json.loads(result.to_json())
    assert data["engine"] == "xllamacpp" and data["settings"]["kind"] == "xllamacpp"
    assert data["fit"]["required_bytes"] == result.fit.required_bytes  # type: ignore[union-attr]
    again = Plan.model_validate(data)
    assert again.settings == result.settings and again.rule == result.rule


def test_a_gguf_refused_where_only_llama_cpp_python_is_installed_names_the_flag() -> None:
    hw = detect(probes(cpu(cores=2, ram_gib=24)))
    result = plan(hw, read_gguf(embedded_model_path()), installed={"llama-cpp-python"})
    assert result.refusal is not None and "xllamacpp: not installed" in result.refusal
    assert result.refusal.endswith(
        "--engine llama-cpp-python serves this model one request at a time."
    )
