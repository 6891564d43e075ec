"""Engine adapters: command lines, health paths, metrics parsing, and the plan factory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from outpost.runner.engines import (
    AttachedEngine,
    EngineAdapter,
    LlamaCppPythonEngine,
    PlanRefusedError,
    VllmEngine,
    VllmLoad,
    XllamacppEngine,
    build_engine,
)
from outpost.runner.engines.base import EngineLoad, ServedModel
from outpost.runner.gguf_meta import lookup_known, read_gguf
from outpost.runner.hardware import detect
from outpost.runner.models import embedded_model_path
from outpost.runner.planning import plan
from tests.runner.fakes import nvidia_gpu, probes

DATA = Path(__file__).parent / "data"
ALL = {"xllamacpp", "llama-cpp-python", "vllm"}
MODEL = (ServedModel(name="meta-llama/Llama-3.1-8B-Instruct", engine="vllm"),)


def _vllm(**kwargs: object) -> VllmEngine:
    return VllmEngine(model="meta-llama/Llama-3.1-8B-Instruct", models=MODEL, capacity=64,
                      **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_vllm_argv() -> None:
    spec = _vllm(tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=32768,
                 quantization="awq", served_model_name="llama-8b").launch_spec(8123)  # fmt: skip
    assert spec.argv == [
        sys.executable, "-m", "vllm.entrypoints.cli.main",
        "serve", "meta-llama/Llama-3.1-8B-Instruct",
        "--host", "127.0.0.1", "--port", "8123",
        "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.90",
        "--max-model-len", "32768",
        "--enable-prefix-caching",
        "--quantization", "awq",
        "--served-model-name", "llama-8b",
    ]  # fmt: skip
    assert spec.env["VLLM_NO_USAGE_STATS"] == "1"  # no telemetry leaves the premises
    assert "CUDA_VISIBLE_DEVICES" not in spec.env


def test_vllm_pins_the_planned_gpus_in_nvml_order() -> None:
    spec = _vllm(gpu_indices=(2, 3)).launch_spec(9000)
    assert spec.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "--quantization" not in spec.argv and "--max-model-len" not in spec.argv


def test_vllm_health_and_url() -> None:
    engine: EngineAdapter = _vllm()
    assert engine.health_path == "/health"
    assert engine.base_url(8123) == "http://127.0.0.1:8123"


# Recorded from vLLM 0.24.0 on an H100 (bench/bench_gpu.py --engine vllm --record, docs/gpu.md):
# idle after start-up, one second into 256 concurrent streams, and after the benchmark.
IDLE, BUSY, AFTER = (DATA / f"vllm_0.24_metrics_{tag}.txt" for tag in ("idle", "busy", "after"))


def test_vllm_0_24_metrics_under_load() -> None:
    load = _vllm().parse_metrics(BUSY.read_text())
    assert isinstance(load, VllmLoad) and isinstance(load, EngineLoad)
    assert (load.running, load.waiting) == (256, 0)
    assert load.kv_cache_usage == pytest.approx(0.0077802469255867646)
    assert (load.prefix_cache_hits, load.prefix_cache_queries) == (51296, 60952)
    assert load.prefix_cache_hit_rate == pytest.approx(51296 / 60952)


def test_vllm_0_24_counters_served_and_tokens() -> None:
    """Issue 25 bug b: the served count and the token counters of vLLM 0.24 are read."""
    after = _vllm().parse_metrics(AFTER.read_text())
    assert (after.running, after.waiting, after.kv_cache_usage) == (0, 0, 0.0)
    # request_success_total{finished_reason="length"} 5444 (every request ran to max_tokens).
    assert after.requests_finished == 5444
    assert (after.prompt_tokens, after.generation_tokens) == (206872, 696832)
    assert after.generation_tokens == 5444 * 128
    idle = _vllm().parse_metrics(IDLE.read_text())
    assert (idle.requests_finished, idle.prompt_tokens, idle.generation_tokens) == (0, 0, 0)
    assert idle.prefix_cache_hit_rate is None  # no queries yet


def test_vllm_aborted_and_failed_requests_are_not_served() -> None:
    """vLLM counts aborted and failed requests under request_success_total too."""
    text = AFTER.read_text()
    for reason, n in (("abort", 7), ("error", 3), ("stop", 11)):
        line = (
            f'vllm:request_success_total{{engine="0",finished_reason="{reason}",'
            'model_name="SmolLM2-135M-Instruct"}'
        )
        assert f"{line} 0.0" in text
        text = text.replace(f"{line} 0.0", f"{line} {n}.0")
    assert _vllm().parse_metrics(text).requests_finished == 5444 + 11


def test_vllm_metrics_from_a_hostile_server_stay_finite() -> None:
    """An attached "vLLM" may write anything the exposition format allows: +Inf, NaN, negatives.
    The load stays defined, and nothing raises (an OverflowError from int(inf) would end the
    runner's metrics polling for good)."""
    text = AFTER.read_text()
    for name, value in (
        ("vllm:num_requests_running", "+Inf"),
        ("vllm:num_requests_waiting", "-12.0"),
        ("vllm:kv_cache_usage_perc", "NaN"),
        ("vllm:generation_tokens_total", "+Inf"),
        ("vllm:prompt_tokens_total", "-1.0"),
    ):
        line = f'{name}{{engine="0",model_name="SmolLM2-135M-Instruct"}}'
        assert f"{line} 0.0" in text or line in text
        text = "\n".join(
            f"{line} {value}" if ln.startswith(line + " ") else ln for ln in text.splitlines()
        )
    load = _vllm().parse_metrics(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (0, 0, None)
    assert (load.generation_tokens, load.prompt_tokens, load.requests_finished) == (
        None,
        None,
        5444,
    )


def _second_engine(text: str) -> str:
    """The recorded samples again as data-parallel engine "1", with twice the counts (vLLM labels
    each engine core of a --data-parallel-size server apart)."""
    extra = []
    for line in text.splitlines():
        if line.startswith("vllm:") and 'engine="0"' in line:
            name, value = line.rsplit(" ", 1)
            extra.append(
                f"{name.replace(chr(34) + '0' + chr(34), chr(34) + '1' + chr(34))} "
                f"{float(value) * 2}"
            )
    return text + "\n".join(extra) + "\n"


def test_vllm_metrics_sum_over_engines_and_take_the_fullest_kv_cache() -> None:
    load = _vllm().parse_metrics(_second_engine(BUSY.read_text()))
    assert (load.running, load.waiting) == (256 * 3, 0)
    assert load.kv_cache_usage == pytest.approx(2 * 0.0077802469255867646)
    assert load.requests_finished == 1348 * 3
    assert (load.prompt_tokens, load.generation_tokens) == (60952 * 3, 194852 * 3)


def _legacy(text: str, *, v0: bool) -> str:
    """The recorded text under the names of earlier vLLM generations: up to 0.9 the KV and prefix
    metrics said "gpu_"; the V0 engine exported a hit-rate gauge instead of counters."""
    text = text.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    text = text.replace("vllm:prefix_cache_", "vllm:gpu_prefix_cache_")
    if v0:
        text = "\n".join(line for line in text.splitlines() if "gpu_prefix_cache_" not in line)
        text += '\nvllm:gpu_prefix_cache_hit_rate{model_name="SmolLM2-135M-Instruct"} 0.5625\n'
    return text


def test_vllm_metrics_early_v1_names() -> None:
    load = _vllm().parse_metrics(_legacy(BUSY.read_text(), v0=False))
    assert (load.running, load.kv_cache_usage) == (256, pytest.approx(0.0077802469255867646))
    assert (load.prefix_cache_hits, load.prefix_cache_queries) == (51296, 60952)


def test_vllm_metrics_v0_engine_names() -> None:
    load = _vllm().parse_metrics(_legacy(BUSY.read_text(), v0=True))
    assert load.kv_cache_usage == pytest.approx(0.0077802469255867646)
    assert load.prefix_cache_hits is None and load.prefix_cache_queries is None
    assert load.prefix_cache_hit_rate == pytest.approx(0.5625)  # the V0 gauge


def test_vllm_empty_metrics_read_as_idle() -> None:
    load = _vllm().parse_metrics("")
    assert (load.running, load.waiting, load.kv_cache_usage) == (0, 0, None)
    assert (load.requests_finished, load.prompt_tokens, load.generation_tokens) == (
        None,
        None,
        None,
    )


def test_llama_cpp_python_argv_capacity_and_health() -> None:
    engine = LlamaCppPythonEngine(
        model_path="/m/model.gguf",
        ctx=2048,
        threads=4,
        # fmt: skip
        models=(ServedModel(name="smol", engine="llama-cpp-python"),),
    )
    argv = engine.launch_spec(7001).argv
    assert argv[:3] == [sys.executable, "-m", "llama_cpp.server"]
    i = argv.index("--interrupt_requests")
    assert argv[i + 1] == "False"  # never cut a running answer off for a new request
    for flag, value in (("--model", "/m/model.gguf"), ("--host", "127.0.0.1"),
                        ("--port", "7001"), ("--n_ctx", "2048"), ("--n_threads", "4"),
                        ("--model_alias", "smol")):  # fmt: skip
        assert argv[argv.index(flag) + 1] == value
    assert engine.capacity == 1
    assert engine.health_path == "/v1/models"
    assert engine.parse_metrics("anything") == EngineLoad()


def test_attached_engine() -> None:
    engine = AttachedEngine(url="http://gpu-box:8000/v1/", api_key="sk-local")
    assert engine.launch_spec(1234) is None
    assert engine.base_url(None) == "http://gpu-box:8000"
    assert engine.health_path == "/v1/models"
    assert engine.headers() == {"Authorization": "Bearer sk-local"}
    assert "sk-local" not in repr(engine)
    assert AttachedEngine(url="http://x").headers() == {}
    assert (
        engine.parse_metrics(BUSY.read_text()).running == 256
    )  # an attached vLLM's metrics are read
    assert engine.parse_metrics("") == EngineLoad()


def test_build_engine_for_a_cpu_gguf_plan() -> None:
    result = plan(detect(probes()), read_gguf(embedded_model_path()), installed=ALL)
    engine = build_engine(result)
    assert isinstance(engine, XllamacppEngine)
    assert engine.model_path == str(embedded_model_path())
    assert (engine.capacity, engine.ctx, engine.gpu_layers) == (4, 4 * 4096, 0)
    (served,) = engine.models
    assert served.name == "smollm2-135m-instruct" and served.context_length == 4096
    assert served.quantization == "Q4_1"


def test_build_engine_for_a_vllm_plan() -> None:
    model = lookup_known("meta-llama/Llama-3.1-70B-Instruct")
    result = plan(detect(probes(gpus=[nvidia_gpu(0), nvidia_gpu(1)])), model, installed=ALL)
    engine = build_engine(result)
    assert isinstance(engine, VllmEngine)
    argv = engine.launch_spec(8000).argv
    # The interpreter that imports vllm runs it (a `vllm` script on PATH may be another install, or
    # none).
    assert argv[:5] == [
        sys.executable,
        "-m",
        "vllm.entrypoints.cli.main",
        "serve",
        "meta-llama/Llama-3.1-70B-Instruct",
    ]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--served-model-name") + 1] == "meta-llama/Llama-3.1-70B-Instruct"
    assert engine.capacity == result.capacity


def test_build_engine_for_llama_cpp_python_and_attach() -> None:
    hw = detect(probes())
    gguf = read_gguf(embedded_model_path())
    engine = build_engine(plan(hw, gguf, engine="llama-cpp-python", installed=ALL))
    assert isinstance(engine, LlamaCppPythonEngine) and engine.capacity == 1
    attached = build_engine(plan(hw, None, attach_url="http://h:1/v1", installed=ALL),
                            api_key="k")  # fmt: skip
    assert (
        isinstance(attached, AttachedEngine) and attached.headers()["Authorization"] == "Bearer k"
    )
    assert attached.models == ()


def test_build_engine_refuses_a_refused_plan() -> None:
    model = lookup_known("meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(PlanRefusedError, match="no NVIDIA GPU"):
        build_engine(plan(detect(probes()), model, installed=ALL))
