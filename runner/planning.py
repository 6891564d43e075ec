"""Which engine serves a model on this hardware, with which settings, and why.

:func:`plan` is a pure function of the hardware report, the model's shape and
the set of installed engines, so ``runner plan`` (which prints the decision)
and ``runner local-runner`` (which acts on it) can never disagree. Every
engine is evaluated, so the plan can say why each alternative lost.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, Field, computed_field

from runner.gguf_meta import ModelSpec, kv_bytes_per_token
from runner.hardware import GpuInfo, HardwareReport

__all__ = [
    "ENGINES",
    "AttachSettings",
    "LlamaCppPythonSettings",
    "MemoryFit",
    "Overrides",
    "Plan",
    "Rejected",
    "VllmSettings",
    "XllamacppSettings",
    "installed_engines",
    "plan",
]

GIB = 1024**3
MIB = 1024**2
#: Preference order when no engine is requested.
ENGINES = ("vllm", "xllamacpp", "llama-cpp-python")
_MODULES = {"vllm": "vllm", "xllamacpp": "xllamacpp", "llama-cpp-python": "llama_cpp"}

#: Below this many tokens a chat model is barely usable; plans never go lower.
MIN_CTX = 2048
#: Per-slot context llama.cpp gets by default: long enough for chat, small enough
#: that several slots fit on a laptop.
DEFAULT_SLOT_CTX = 4096
#: Measured on 2 cores: 4 streams gave 125 tok/s aggregate vs 99 for one; more
#: slots only split the same compute further on a CPU.
MAX_SLOTS_CPU = 4
MAX_SLOTS_GPU = 16
#: Share of free RAM left to the OS, the runner and the page cache.
RAM_RESERVE = 0.10
#: Apple's Metal lets one process wire roughly 3/4 of unified memory.
APPLE_GPU_SHARE = 0.75
#: CUDA/HIP context and BLAS workspaces, per GPU.
GPU_CONTEXT_BYTES = 512 * MIB
#: vLLM's own default; kept so the rest of the GPU stays usable by others.
VLLM_UTILIZATION = 0.90
#: Per GPU outside weights and KV: profiling-run activations, CUDA graphs, NCCL buffers.
VLLM_OVERHEAD_BYTES = 2 * GIB
#: Tokens one typical request occupies, to turn a KV budget into advertised capacity.
VLLM_REQUEST_TOKENS = 4096
VLLM_MAX_SEQS = 256  # vLLM's default --max-num-seqs
VLLM_QUANTIZATIONS = {"awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "awq_marlin"}


def installed_engines() -> frozenset[str]:
    """Engines importable in this environment (the real default for ``plan``)."""
    return frozenset(
        name for name, module in _MODULES.items() if importlib.util.find_spec(module) is not None
    )


class MemoryFit(BaseModel):
    """required = weights + kv_bytes_per_token × ctx × slots + overhead + reserve ≤ available."""

    where: str
    weights_bytes: int
    kv_bytes_per_token: int
    ctx: int
    slots: int
    overhead_bytes: int
    reserve_bytes: int = 0
    available_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.ctx * self.slots

    @computed_field  # type: ignore[prop-decorator]
    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes + self.reserve_bytes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fits(self) -> bool:
        return self.required_bytes <= self.available_bytes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.required_bytes - self.available_bytes)


class XllamacppSettings(BaseModel):
    kind: Literal["xllamacpp"] = "xllamacpp"
    slots: int
    #: Context per slot; llama.cpp's ``n_ctx`` is ``ctx_per_slot × slots``.
    ctx_per_slot: int
    threads: int
    gpu_layers: int

    @property
    def ctx(self) -> int:
        return self.ctx_per_slot * self.slots


class LlamaCppPythonSettings(BaseModel):
    kind: Literal["llama-cpp-python"] = "llama-cpp-python"
    ctx: int
    threads: int
    gpu_layers: int


class VllmSettings(BaseModel):
    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    enable_prefix_caching: bool = True
    quantization: str | None = None
    #: NVML indices of the GPUs to use (the ones with the most free memory).
    gpu_indices: list[int]
    max_num_seqs: int


class AttachSettings(BaseModel):
    kind: Literal["attach"] = "attach"
    url: str


Settings = Annotated[
    XllamacppSettings | LlamaCppPythonSettings | VllmSettings | AttachSettings,
    Field(discriminator="kind"),
]


class Rejected(BaseModel):
    engine: str
    reason: str
    fit: MemoryFit | None = None


class Plan(BaseModel):
    engine: str | None
    settings: Settings | None = None
    #: Concurrent requests the control plane may send (0 when refused).
    capacity: int = 0
    rule: str
    fit: MemoryFit | None = None
    rejected: list[Rejected] = Field(default_factory=list)
    refusal: str | None = None
    model: ModelSpec | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class _Choice(BaseModel):
    engine: str
    settings: Settings
    capacity: int
    rule: str
    fit: MemoryFit | None = None
    also_rejected: list[Rejected] = Field(default_factory=list)


@dataclass(frozen=True)
class Overrides:
    """What the user fixed on the command line; the plan keeps it and checks the fit."""

    parallel: int | None = None
    #: Total context: llama.cpp splits it between slots; vLLM's --max-model-len.
    ctx: int | None = None
    threads: int | None = None


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _threads(hw: HardwareReport, ov: Overrides) -> int:
    # llama.cpp runs best on physical cores; hyperthreads contend for the same units.
    return ov.threads or hw.cpu.physical_cores or hw.cpu.logical_cores or 0


# --- llama.cpp family ------------------------------------------------------


def _llama_overhead(model: ModelSpec) -> int:
    return 256 * MIB + model.weights_bytes // 20  # compute buffers grow with the model


def _size_slots(model: ModelSpec, where: str, available: int, overhead: int, reserve: int,
                max_slots: int, ov: Overrides) -> MemoryFit:  # fmt: skip
    """As many slots of DEFAULT_SLOT_CTX as fit; else one slot with the longest context that fits."""
    kv = model.kv_bytes_per_token
    room = available - reserve - overhead - model.weights_bytes
    ctx = min(model.context_length, DEFAULT_SLOT_CTX)
    if ov.parallel or ov.ctx:
        slots = ov.parallel or max(1, min(max_slots, (ov.ctx or 0) // ctx))
        ctx = (ov.ctx // slots) if ov.ctx else ctx
    else:
        slots = max(0, min(max_slots, room // (kv * ctx))) if kv else max_slots
    if slots == 0:
        slots = 1
        longest = (max(room, 0) // kv // 256) * 256 if kv else model.context_length
        ctx = max(min(longest, model.context_length), min(MIN_CTX, model.context_length))
    return MemoryFit(where=where, weights_bytes=model.weights_bytes, kv_bytes_per_token=kv,
                     ctx=ctx, slots=slots, overhead_bytes=overhead, reserve_bytes=reserve,
                     available_bytes=available)  # fmt: skip


def _offload_gpus(hw: HardwareReport) -> list[GpuInfo]:
    # One llama.cpp build targets one vendor; MIG parents cannot run CUDA themselves.
    for vendor in ("nvidia", "amd", "apple"):
        gpus = [g for g in hw.gpus_of(vendor) if not g.mig_enabled]
        if gpus:
            return gpus
    return []


def _gpu_fit(hw: HardwareReport, model: ModelSpec, max_slots: int, ov: Overrides) -> MemoryFit | None:
    gpus = _offload_gpus(hw)
    if not gpus:
        return None
    if gpus[0].unified_memory:
        free = min(gpus[0].memory_free_bytes, int(gpus[0].memory_total_bytes * APPLE_GPU_SHARE))
        where = f"unified memory of {gpus[0].name} (Metal's share)"
    else:
        free = sum(g.memory_free_bytes for g in gpus)
        where = f"free VRAM of {len(gpus)}× {gpus[0].name}"
    overhead = _llama_overhead(model) + GPU_CONTEXT_BYTES * len(gpus)
    return _size_slots(model, where, free, overhead, 0, max_slots, ov)


def _cpu_fit(hw: HardwareReport, model: ModelSpec, max_slots: int, ov: Overrides) -> MemoryFit:
    free = hw.cpu.ram_available_bytes
    reserve = int(free * RAM_RESERVE)
    return _size_slots(model, "free RAM", free, _llama_overhead(model), reserve, max_slots, ov)


def _place_llama(
    hw: HardwareReport, model: ModelSpec, engine: str, max_slots: int, ov: Overrides
) -> tuple[MemoryFit, int, list[Rejected]] | Rejected:
    """Full GPU offload when it fits the GPUs, else CPU; partial offload is not planned."""
    also: list[Rejected] = []
    gpu = _gpu_fit(hw, model, max_slots, ov)
    if gpu is not None and gpu.fits:
        return gpu, model.layers + 1, also  # +1: the output layer is offloaded separately
    if gpu is not None:
        also.append(Rejected(engine=f"{engine} (full GPU offload)", fit=gpu, reason=(
            f"needs {_gib(gpu.required_bytes)}, the {gpu.where} is {_gib(gpu.available_bytes)}"
        )))  # fmt: skip
    cpu = _cpu_fit(hw, model, max_slots, ov)
    if cpu.fits:
        return cpu, 0, also
    return Rejected(engine=engine, fit=cpu, reason=(
        f"needs {_gib(cpu.required_bytes)} of RAM, {_gib(cpu.available_bytes)} free"
        + (f"; GPU offload {also[0].reason}" if also else "")
    ))  # fmt: skip


def _xllamacpp(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    if model.format != "gguf":
        return Rejected(engine="xllamacpp", reason="llama.cpp needs a GGUF file; this model is "
                        "in Hugging Face format (convert it, or use vLLM on an NVIDIA GPU)")  # fmt: skip
    if "xllamacpp" not in installed:
        return Rejected(engine="xllamacpp", reason="xllamacpp is not installed (pip install xllamacpp)")
    gpus = _offload_gpus(hw)
    placed = _place_llama(hw, model, "xllamacpp", MAX_SLOTS_GPU if gpus else MAX_SLOTS_CPU, ov)
    if isinstance(placed, Rejected):
        return placed
    fit, gpu_layers, also = placed
    if gpu_layers:
        where = f"full offload of {gpu_layers} layers to {fit.where.split(' of ', 1)[-1]}"
    else:
        where = "CPU" + (" (it does not fit the GPUs' free memory)" if gpus else "")
    settings = XllamacppSettings(slots=fit.slots, ctx_per_slot=fit.ctx,
                                 threads=_threads(hw, ov), gpu_layers=gpu_layers)  # fmt: skip
    rule = (f"GGUF model → llama.cpp through xllamacpp (continuous batching, {fit.slots} "
            f"parallel slots sized from free memory), {where}")  # fmt: skip
    return _Choice(engine="xllamacpp", settings=settings, capacity=fit.slots, rule=rule,
                   fit=fit, also_rejected=also)  # fmt: skip


def _llama_cpp_python(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    name = "llama-cpp-python"
    if model.format != "gguf":
        return Rejected(engine=name, reason="llama.cpp needs a GGUF file; this model is in "
                        "Hugging Face format")  # fmt: skip
    if name not in installed:
        return Rejected(engine=name, reason="llama-cpp-python is not installed "
                        "(pip install 'llama-cpp-python[server]')")  # fmt: skip
    placed = _place_llama(hw, model, name, 1, Overrides(ctx=ov.ctx, threads=ov.threads, parallel=1))
    if isinstance(placed, Rejected):
        return placed
    fit, gpu_layers, also = placed
    settings = LlamaCppPythonSettings(ctx=fit.ctx, threads=_threads(hw, ov), gpu_layers=gpu_layers)
    rule = ("--engine llama-cpp-python requested → its server, which runs one request at a "
            "time (capacity 1, started with --interrupt_requests False)")  # fmt: skip
    return _Choice(engine=name, settings=settings, capacity=1, rule=rule, fit=fit,
                   also_rejected=also)  # fmt: skip


# --- vLLM ------------------------------------------------------------------


def _vllm_fit(
    model: ModelSpec, gpus: list[GpuInfo], tp: int, ov: Overrides
) -> tuple[MemoryFit, float]:
    """Per-GPU fit at tensor parallel ``tp``: weights and KV heads split across GPUs."""
    # vLLM refuses to start when free memory is below utilization × total.
    headroom = min(g.memory_free_bytes / g.memory_total_bytes for g in gpus) - 0.01
    util = math.floor(min(VLLM_UTILIZATION, headroom) * 100) / 100
    budget = int(max(util, 0.0) * min(g.memory_total_bytes for g in gpus))
    kv = kv_bytes_per_token(model.layers, math.ceil(model.kv_head_count / tp), model.head_dim)
    weights = math.ceil(model.weights_bytes / tp)
    room = budget - weights - VLLM_OVERHEAD_BYTES
    tokens = (max(room, 0) // kv // 256) * 256 if kv else model.context_length
    ctx = ov.ctx or max(min(tokens, model.context_length), min(MIN_CTX, model.context_length))
    where = (f"per GPU: {util:.2f} (gpu_memory_utilization) × "
             f"{_gib(min(g.memory_total_bytes for g in gpus))} of {gpus[0].name}, TP {tp}")  # fmt: skip
    return MemoryFit(where=where, weights_bytes=weights, kv_bytes_per_token=kv, ctx=ctx, slots=1,
                     overhead_bytes=VLLM_OVERHEAD_BYTES, available_bytes=budget), util  # fmt: skip


def _vllm(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    if model.format != "hf":
        return Rejected(engine="vllm", reason="this is a GGUF file; vLLM is planned for "
                        "Hugging Face-format models only")  # fmt: skip
    nvidia = hw.gpus_of("nvidia")
    if not nvidia:
        return Rejected(engine="vllm", reason="no NVIDIA GPU detected")
    if "vllm" not in installed:
        return Rejected(engine="vllm", reason="vllm is not installed (pip install vllm)")
    # MIG parents run nothing themselves; vLLM needs compute capability 7.0 or newer.
    usable = [g for g in nvidia if not g.mig_enabled
              and float(g.compute_capability or "7.0") >= 7.0]  # fmt: skip
    if not usable:
        return Rejected(engine="vllm", reason="no usable NVIDIA GPU (MIG enabled or compute "
                        "capability below 7.0)")  # fmt: skip
    usable.sort(key=lambda g: g.memory_free_bytes, reverse=True)
    last: MemoryFit | None = None
    tp = 1
    while tp <= len(usable):
        if model.head_count % tp == 0:  # vLLM shards attention heads evenly
            fit, util = _vllm_fit(model, usable[:tp], tp, ov)
            if fit.fits:
                kv_tokens = (fit.available_bytes - fit.weights_bytes - fit.overhead_bytes) // max(
                    fit.kv_bytes_per_token, 1
                )
                seqs = ov.parallel or max(1, min(VLLM_MAX_SEQS, kv_tokens // VLLM_REQUEST_TOKENS))
                quant = (model.quantization or "").lower()
                settings = VllmSettings(
                    tensor_parallel_size=tp, gpu_memory_utilization=util, max_model_len=fit.ctx,
                    quantization=quant if quant in VLLM_QUANTIZATIONS else None,
                    gpu_indices=sorted(g.index for g in usable[:tp]), max_num_seqs=seqs,
                )  # fmt: skip
                rule = (f"NVIDIA GPU{'s' if len(nvidia) > 1 else ''}, Hugging Face-format model "
                        f"and vllm installed; weights and KV cache fit with tensor parallel {tp}, "
                        "the smallest power of two that fits → vLLM")  # fmt: skip
                return _Choice(engine="vllm", settings=settings, capacity=seqs, rule=rule, fit=fit)
            last = fit
        tp *= 2
    return Rejected(engine="vllm", fit=last, reason=(
        f"does not fit {len(usable)} GPU(s) at any tensor parallel size: per GPU it needs "
        f"{_gib(last.required_bytes)}, has {_gib(last.available_bytes)}" if last else
        "no tensor parallel size divides the attention heads"
    ))  # fmt: skip


# --- the decision ----------------------------------------------------------

_Evaluator = Callable[[HardwareReport, ModelSpec, frozenset[str], Overrides], _Choice | Rejected]
_EVALUATORS: dict[str, _Evaluator]
_EVALUATORS = {"vllm": _vllm, "xllamacpp": _xllamacpp, "llama-cpp-python": _llama_cpp_python}


def _refusal(model: ModelSpec, rejected: list[Rejected]) -> str:
    short = [r for r in rejected if r.fit is not None and not r.fit.fits]
    if short:
        best = min(short, key=lambda r: r.fit.shortfall_bytes if r.fit else 0)
        fit = best.fit
        assert fit is not None
        return (
            f"{model.name} does not fit: it needs {_gib(fit.required_bytes)} (weights "
            f"{_gib(fit.weights_bytes)} + KV cache {_gib(fit.kv_bytes)} for {fit.ctx} tokens × "
            f"{fit.slots} slot{'s' if fit.slots > 1 else ''} + overhead {_gib(fit.overhead_bytes + fit.reserve_bytes)}), but the "
            f"closest option, {best.engine} in {fit.where}, has {_gib(fit.available_bytes)}: "
            f"short by {_gib(fit.shortfall_bytes)}."
        )
    reasons = "; ".join(f"{r.engine}: {r.reason}" for r in rejected)
    return f"no engine can serve {model.name}: {reasons}."


def plan(
    hardware: HardwareReport,
    model: ModelSpec | None,
    engine: str | None = None,
    installed: Collection[str] | None = None,
    attach_url: str | None = None,
    overrides: Overrides | None = None,
) -> Plan:
    """Choose and configure an engine. Pass ``installed`` to make the call fully pure."""
    ov = overrides or Overrides()
    if attach_url or engine == "attach":
        if not attach_url:
            return Plan(engine=None, rule="--engine attach needs --attach URL", model=model,
                        refusal="--engine attach was requested without --attach URL")  # fmt: skip
        return Plan(engine="attach", settings=AttachSettings(url=attach_url), capacity=4,
                    rule="--attach URL given → proxy the OpenAI-compatible engine already "
                    "running there; the runner probes it but does not manage its process",
                    model=model)  # fmt: skip
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}, attach")
    if model is None:
        raise ValueError("a model is required unless an engine is attached")
    have = installed_engines() if installed is None else frozenset(installed)
    chosen: _Choice | None = None
    rejected: list[Rejected] = []
    for name in ENGINES:
        if engine is not None and name != engine:
            rejected.append(Rejected(engine=name, reason=f"not requested (--engine {engine})"))
            continue
        if engine is None and name == "llama-cpp-python":
            rejected.append(Rejected(engine=name, reason="used only when requested with --engine "
                                     "llama-cpp-python: it serves one request at a time"))  # fmt: skip
            continue
        outcome = _EVALUATORS[name](hardware, model, have, ov)
        if isinstance(outcome, Rejected):
            rejected.append(outcome)
        elif chosen is None:
            chosen = outcome
            rejected.extend(outcome.also_rejected)
        else:
            rejected.append(Rejected(engine=name, fit=outcome.fit, reason=(
                f"would also work, but {chosen.engine} comes first for this model")))  # fmt: skip
    if chosen is None:
        return Plan(engine=None, rule="no engine can serve this model", rejected=rejected, model=model,
                    refusal=_refusal(model, rejected))  # fmt: skip
    return Plan(engine=chosen.engine, settings=chosen.settings, capacity=chosen.capacity,
                rule=chosen.rule, fit=chosen.fit, rejected=rejected, model=model)  # fmt: skip
