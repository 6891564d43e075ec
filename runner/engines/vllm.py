"""vLLM's OpenAI server (``vllm serve``) for Hugging Face-format models on NVIDIA GPUs."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from outpost.runner.engines.base import EngineLoad, LaunchSpec, ServedModel

__all__ = ["VllmEngine", "VllmLoad"]

# vLLM renamed its metrics between engine generations; read both. The V0 engine
# and early V1 (up to 0.9) said "gpu_cache"/"gpu_prefix_cache"; 0.10+ dropped "gpu_".
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
_PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
# vLLM 0.24 (as recorded on an H100, tests/runner/data/vllm_0.24_metrics_*.txt) labels
# request_success_total by finished_reason, aborted and failed requests included: those were not
# served.
_NOT_SERVED = frozenset({"abort", "error"})


@dataclass(frozen=True)
class VllmLoad(EngineLoad):
    """Live load plus vLLM's prefix-cache counters (cumulative since engine start)."""

    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None
    #: hits / queries, or the V0 engine's own gauge (it exported no counters).
    prefix_cache_hit_rate: float | None = None


def _first(values: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    for name in names:
        if name in values:
            return values[name]
    return None


def _total(values: dict[str, list[float]], name: str) -> int | None:
    return int(sum(values[name])) if name in values else None


@dataclass
class VllmEngine:
    #: Hub id or local directory, as ``vllm serve`` takes it.
    model: str
    models: tuple[ServedModel, ...]
    capacity: int
    #: Of ``capacity``, slots the control plane grants only to a tenant with
    #: nothing in flight (fair headroom, docs/fairness.md); it admits the rest freely.
    headroom: int = 0
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    quantization: str | None = None
    #: The public name clients use; vLLM otherwise answers to the path or hub id.
    served_model_name: str | None = None
    max_num_seqs: int | None = None
    #: NVML indices (PCI bus order) of the GPUs to run on; None: all visible.
    gpu_indices: tuple[int, ...] | None = None
    #: vLLM's tool-call parser for the model family (runner/tool_support.py); None: no tools.
    tool_call_parser: str | None = None
    #: The interpreter that runs ``vllm serve``: the runner's own, the one whose ``import vllm``
    #: made the planner choose vLLM. A ``vllm`` script on PATH may be another install, or none:
    #: a ``pip install --target`` or an unactivated venv puts the package on ``sys.path`` only.
    python: str = sys.executable
    name: str = "vllm"

    def launch_spec(self, port: int) -> LaunchSpec:
        argv = [
            # The ``vllm`` console script's own entry point (vllm.entrypoints.cli.main:main).
            self.python, "-m", "vllm.entrypoints.cli.main", "serve", self.model,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:.2f}",
        ]  # fmt: skip
        if self.max_model_len is not None:
            argv += ["--max-model-len", str(self.max_model_len)]
        argv.append("--enable-prefix-caching" if self.enable_prefix_caching
                    else "--no-enable-prefix-caching")  # fmt: skip
        if self.quantization:
            argv += ["--quantization", self.quantization]
        if self.served_model_name:
            argv += ["--served-model-name", self.served_model_name]
        if self.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.tool_call_parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        # Prompts must not leave the premises, and neither should usage telemetry.
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if self.gpu_indices is not None:
            # NVML numbers GPUs in PCI bus order; CUDA's default order can differ.
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in self.gpu_indices)
        return LaunchSpec(argv=argv, env=env)

    def base_url(self, port: int | None) -> str:
        return f"http://127.0.0.1:{port}"

    @property
    def health_path(self) -> str:
        return "/health"

    @property
    def liveness_path(self) -> str:
        return "/health"  # 200 while the engine core is alive, busy or not

    def parse_metrics(self, text: str) -> VllmLoad:
        """Sum counts over label sets (one per model name / data-parallel engine); the KV
        usage reported is the fullest engine's, since that one queues first."""
        values: dict[str, list[float]] = defaultdict(list)
        finished: list[float] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                # Counts and ratios are finite and never negative; anything else (an attached
                # server may write +Inf, NaN or -1) is dropped here, or int(inf) would raise
                # OverflowError and end the runner's metrics polling for good.
                if not (math.isfinite(sample.value) and sample.value >= 0):
                    continue
                values[sample.name].append(sample.value)
                if (
                    sample.name == "vllm:request_success_total"
                    and sample.labels.get("finished_reason") not in _NOT_SERVED
                ):
                    finished.append(sample.value)
        kv = _first(values, _KV_USAGE)
        hits = _first(values, _PREFIX_HITS)
        queries = _first(values, _PREFIX_QUERIES)
        if hits and queries:
            rate = sum(hits) / sum(queries) if sum(queries) else None
        else:  # V0 writes -1 before the first query (dropped above)
            gauge = values.get("vllm:gpu_prefix_cache_hit_rate", [])
            rate = sum(gauge) / len(gauge) if gauge else None
        return VllmLoad(
            running=int(sum(values.get("vllm:num_requests_running", []))),
            waiting=int(sum(values.get("vllm:num_requests_waiting", []))),
            kv_cache_usage=min(max(max(kv), 0.0), 1.0) if kv else None,
            prefix_cache_hits=sum(hits) if hits else None,
            prefix_cache_queries=sum(queries) if queries else None,
            prefix_cache_hit_rate=rate,
            requests_finished=int(sum(finished)) if finished else None,
            prompt_tokens=_total(values, "vllm:prompt_tokens_total"),
            generation_tokens=_total(values, "vllm:generation_tokens_total"),
        )
