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
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import BaseModel, Field, computed_field

from outpost.runner.gguf_meta import ModelSpec, kv_bytes_per_token
from outpost.runner.hardware import GpuInfo, HardwareReport
from outpost.runner.tool_support import vllm_tool_parser

__all__ = [
    "DEFAULT_HEADROOM",
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
    "offload_gpus",
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
#: An attached engine's concurrency is unknown; a few at once keeps the fair
#: scheduler (not the engine's own queue) deciding who goes next.
ATTACH_CAPACITY = 4
#: Fair-headroom slots a started engine gets by default: one is enough for a
#: light tenant's request to start at once; more only serve several at once.
DEFAULT_HEADROOM = 1


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

    # mypy refuses a decorator over @property (python/mypy#1362);
    # pydantic documents computed_field this way.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.ctx * self.slots

    # mypy refuses a decorator over @property (python/mypy#1362);
    # pydantic documents computed_field this way.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def required_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes + self.reserve_bytes

    # mypy refuses a decorator over @property (python/mypy#1362);
    # pydantic documents computed_field this way.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def fits(self) -> bool:
        return self.required_bytes <= self.available_bytes

    # mypy refuses a decorator over @property (python/mypy#1362);
    # pydantic documents computed_field this way.
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
    #: Tool calls: through the model's own chat template ("model"), through the ChatML tool
    #: template the runner ships ("chatml-tools"), or none (runner/tool_support.py).
    tools: Literal["model", "chatml-tools"] | None = None

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
    #: NVML (PCI bus order) indices of the GPUs to use: those with the most free memory.
    gpu_indices: list[int]
    max_num_seqs: int
    #: vLLM's --tool-call-parser for the model family (started with --enable-auto-tool-choice);
    #: None: the family's call format is not known, the model gets no tools.
    tool_call_parser: str | None = None


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
    #: False when the engine was skipped by rule (not requested) rather than tried.
    evaluated: bool = True


class Plan(BaseModel):
    engine: str | None
    settings: Settings | None = None
    #: Concurrent requests the control plane may send (0 when refused).
    capacity: int = 0
    #: Engine slots beyond ``capacity`` that the control plane grants only to a
    #: tenant with nothing in flight (fair headroom, docs/fairness.md). Included
    #: in the engine's slots (``XllamacppSettings.slots``, ``max_num_seqs``) and
    #: in the memory fit.
    headroom: int = 0
    rule: str
    fit: MemoryFit | None = None
    rejected: list[Rejected] = Field(default_factory=list)
    refusal: str | None = None
    model: ModelSpec | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


@dataclass(frozen=True)
class Overrides:
    """What the user fixed on the command line; the plan keeps it and checks the fit."""

    parallel: int | None = None
    #: Total context: llama.cpp splits it between slots; vLLM's --max-model-len.
    ctx: int | None = None
    threads: int | None = None
    #: Fair-headroom slots: added to a started engine's slots; for an attached
    #: engine, taken from its ``parallel``.
    headroom: int = 0


@dataclass
class _Choice:
    engine: str
    settings: XllamacppSettings | LlamaCppPythonSettings | VllmSettings
    capacity: int
    rule: str
    fit: MemoryFit
    also_rejected: list[Rejected] = field(default_factory=list)
    headroom: int = 0


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _threads(hw: HardwareReport, ov: Overrides) -> int:
    # llama.cpp runs best on physical cores; hyperthreads contend for the same units.
    return ov.threads or hw.cpu.physical_cores or hw.cpu.logical_cores or 0


def _floor(tokens: int) -> int:
    return tokens // 256 * 256


def _min_ctx(model: ModelSpec) -> int:
    return min(MIN_CTX, model.context_length)


# --- llama.cpp family ------------------------------------------------------


def _size_slots(
    model: ModelSpec,
    where: str,
    available: int,
    overhead: int,
    reserve: int,
    max_slots: int,
    ov: Overrides,
) -> MemoryFit:
    """As many slots of DEFAULT_SLOT_CTX as fit, else one slot with the longest context that
    fits (never below MIN_CTX: then the fit reports the shortfall)."""
    kv = model.kv_bytes_per_token
    room = available - reserve - overhead - model.weights_bytes
    ctx = min(model.context_length, DEFAULT_SLOT_CTX)
    if ov.parallel or ov.ctx:
        slots = ov.parallel or max(1, min(max_slots, (ov.ctx or 0) // ctx))
        ctx = ov.ctx // slots if ov.ctx else ctx
    else:
        slots = max(0, min(max_slots, room // (kv * ctx))) if kv else max_slots
    if slots == 0:
        slots, longest = 1, _floor(max(room, 0) // kv)
        ctx = max(min(longest, model.context_length), _min_ctx(model))
    compute = 256 * MIB + model.weights_bytes // 20  # llama.cpp's compute buffers and scratch
    return MemoryFit(
        where=where,
        weights_bytes=model.weights_bytes,
        kv_bytes_per_token=kv,
        ctx=ctx,
        slots=slots,
        overhead_bytes=overhead + compute,
        reserve_bytes=reserve,
        available_bytes=available,
    )


def offload_gpus(hw: HardwareReport) -> list[GpuInfo]:
    # One llama.cpp build targets one vendor; MIG parents cannot run CUDA themselves.
    for vendor in ("nvidia", "amd", "apple"):
        gpus = [g for g in hw.gpus_of(vendor) if not g.mig_enabled]
        if gpus:
            return gpus
    return []


def _gpu_fit(gpus: list[GpuInfo], model: ModelSpec, ov: Overrides) -> MemoryFit:
    first = gpus[0]
    if first.unified_memory:
        free = min(first.memory_free_bytes, int(first.memory_total_bytes * APPLE_GPU_SHARE))
        where = f"{first.name}'s unified memory (Metal's share)"
    else:  # llama.cpp splits layers across GPUs by default
        free = sum(g.memory_free_bytes for g in gpus)
        where = f"free VRAM of {len(gpus)}× {first.name}"
    return _size_slots(model, where, free, GPU_CONTEXT_BYTES * len(gpus), 0, MAX_SLOTS_GPU, ov)


def _place_llama(
    hw: HardwareReport, model: ModelSpec, engine: str, ov: Overrides
) -> tuple[MemoryFit, int, list[Rejected]] | Rejected:
    """Full GPU offload when it fits the GPUs, else CPU; partial offload is not planned."""
    also: list[Rejected] = []
    gpus = offload_gpus(hw)
    if gpus:
        gpu = _gpu_fit(gpus, model, ov)
        if gpu.fits:
            return gpu, model.layers + 1, also  # +1: the output layer is offloaded on its own
        also.append(
            Rejected(
                engine=f"{engine} (full GPU offload)",
                fit=gpu,
                reason=(
                    f"needs {_gib(gpu.required_bytes)}, {gpu.where} is {_gib(gpu.available_bytes)}"
                ),
            )
        )
    free = hw.cpu.ram_available_bytes
    cpu = _size_slots(model, "free RAM", free, 0, int(free * RAM_RESERVE), MAX_SLOTS_CPU, ov)
    if cpu.fits:
        return cpu, 0, also
    gpu_note = f"; full GPU offload {also[0].reason}" if also else ""
    return Rejected(
        engine=engine,
        fit=cpu,
        reason=f"needs {_gib(cpu.required_bytes)} of RAM, "
        f"{_gib(cpu.available_bytes)} free{gpu_note}",
    )


def _needs(engine: str, model: ModelSpec, fmt: str, installed: frozenset[str]) -> Rejected | None:
    if model.format != fmt:
        why = (
            "llama.cpp needs a GGUF file; this model is in Hugging Face format (convert it, "
            "or use vLLM on an NVIDIA GPU)"
            if fmt == "gguf"
            else "this is a GGUF file; vLLM is planned for Hugging Face-format models only"
        )
        return Rejected(engine=engine, reason=why)
    if engine not in installed:
        extra = "[server]" if engine == "llama-cpp-python" else ""
        return Rejected(engine=engine, reason=f"not installed (pip install '{engine}{extra}')")
    return None


def _xllamacpp(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    if (missing := _needs("xllamacpp", model, "gguf", installed)) is not None:
        return missing
    placed = _place_llama(hw, model, "xllamacpp", ov)
    if isinstance(placed, Rejected):
        return placed
    fit, gpu_layers, also = placed
    if gpu_layers:
        where = f"all {gpu_layers} layers offloaded ({fit.where})"
    else:
        where = "on CPU" + (", as it does not fit the GPUs" if also else "")
    tools = _LLAMA_TOOLS.get(model.chat_template_tools or "none")
    settings = XllamacppSettings(
        slots=fit.slots,
        ctx_per_slot=fit.ctx,
        threads=_threads(hw, ov),
        gpu_layers=gpu_layers,
        tools=tools,
    )
    rule = (
        f"GGUF model → llama.cpp through xllamacpp (continuous batching; {fit.slots} "
        f"parallel slots sized from free memory), {where}; tool calls: {_TOOLS_RULE[tools]}"
    )
    return _Choice("xllamacpp", settings, fit.slots, rule, fit, also)


def _llama_cpp_python(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    name = "llama-cpp-python"
    if (missing := _needs(name, model, "gguf", installed)) is not None:
        return missing
    placed = _place_llama(hw, model, name, Overrides(1, ov.ctx, ov.threads))
    if isinstance(placed, Rejected):
        return placed
    fit, gpu_layers, also = placed
    settings = LlamaCppPythonSettings(ctx=fit.ctx, threads=_threads(hw, ov), gpu_layers=gpu_layers)
    rule = (
        "--engine llama-cpp-python requested → its server, which runs one request at a "
        "time (capacity 1, started with --interrupt_requests False)"
    )
    return _Choice(name, settings, 1, rule, fit, also)


_LLAMA_TOOLS: dict[str, Literal["model", "chatml-tools"] | None] = {
    "native": "model",
    "chatml": "chatml-tools",
}
_TOOLS_RULE: dict[str | None, str] = {
    "model": "the model's chat template renders them",
    "chatml-tools": "its ChatML template has none; the runner's ChatML tool template is used",
    None: "none (the model's chat template has no tools and is not ChatML)",
}


# --- vLLM ------------------------------------------------------------------


def _vllm_fit(
    model: ModelSpec, gpus: list[GpuInfo], tp: int, ov: Overrides
) -> tuple[MemoryFit, float]:
    """Per-GPU fit at tensor parallel ``tp``: weights and KV heads are split across GPUs."""
    # vLLM refuses to start when free memory is below utilization × total.
    headroom = min(g.memory_free_bytes / g.memory_total_bytes for g in gpus) - 0.01
    util = max(0.0, math.floor(min(VLLM_UTILIZATION, headroom) * 100) / 100)
    smallest = min(g.memory_total_bytes for g in gpus)
    budget = int(util * smallest)
    kv = kv_bytes_per_token(model.layers, math.ceil(model.kv_head_count / tp), model.head_dim)
    weights = math.ceil(model.weights_bytes / tp)
    tokens = _floor(max(budget - weights - VLLM_OVERHEAD_BYTES, 0) // kv)
    ctx = ov.ctx or max(min(tokens, model.context_length), _min_ctx(model))
    where = f"{util:.2f} (gpu_memory_utilization) × {_gib(smallest)} per GPU, TP {tp}"
    fit = MemoryFit(
        where=where,
        weights_bytes=weights,
        kv_bytes_per_token=kv,
        ctx=ctx,
        slots=1,
        overhead_bytes=VLLM_OVERHEAD_BYTES,
        available_bytes=budget,
    )
    return fit, util


def _vllm(
    hw: HardwareReport, model: ModelSpec, installed: frozenset[str], ov: Overrides
) -> _Choice | Rejected:
    nvidia = hw.gpus_of("nvidia")
    if model.format == "hf" and not nvidia:
        return Rejected(engine="vllm", reason="no NVIDIA GPU detected")
    if (missing := _needs("vllm", model, "hf", installed)) is not None:
        return missing
    # MIG parents run nothing themselves; vLLM needs compute capability 7.0 or newer.
    usable = [
        g for g in nvidia if not g.mig_enabled and float(g.compute_capability or "7.0") >= 7.0
    ]
    usable.sort(key=lambda g: g.memory_free_bytes, reverse=True)
    last: MemoryFit | None = None
    tp = 1
    while tp <= len(usable):
        if model.head_count % tp == 0:  # vLLM shards attention heads evenly
            fit, util = _vllm_fit(model, usable[:tp], tp, ov)
            if fit.fits:
                return _vllm_choice(model, fit, util, usable[:tp], many=len(nvidia) > 1, ov=ov)
            last = fit
        tp *= 2
    if last is None:
        return Rejected(
            engine="vllm",
            reason="no usable NVIDIA GPU (MIG enabled or compute "
            "capability below 7.0), or no tensor parallel size divides the heads",
        )
    return Rejected(
        engine="vllm",
        fit=last,
        reason=(
            f"does not fit {len(usable)} GPU(s) at any tensor parallel size: per GPU it needs "
            f"{_gib(last.required_bytes)}, has {_gib(last.available_bytes)}"
        ),
    )


def _vllm_choice(
    model: ModelSpec, fit: MemoryFit, util: float, gpus: list[GpuInfo], *, many: bool, ov: Overrides
) -> _Choice:
    kv_tokens = (fit.available_bytes - fit.weights_bytes - fit.overhead_bytes) // max(
        fit.kv_bytes_per_token, 1
    )
    seqs = ov.parallel or max(1, min(VLLM_MAX_SEQS, kv_tokens // VLLM_REQUEST_TOKENS))
    quant = (model.quantization or "").lower()
    tp = len(gpus)
    settings = VllmSettings(
        tensor_parallel_size=tp,
        gpu_memory_utilization=util,
        max_model_len=fit.ctx,
        quantization=quant if quant in VLLM_QUANTIZATIONS else None,
        gpu_indices=sorted(g.index for g in gpus),
        max_num_seqs=seqs,
        tool_call_parser=(parser := vllm_tool_parser(model.architecture, model.name)),
    )
    rule = (
        f"NVIDIA GPU{'s' if many else ''}, Hugging Face-format model and vllm installed; "
        f"weights and KV cache fit with tensor parallel {tp}, the smallest power of two "
        "that fits → vLLM; tool calls: "
        + (f"--tool-call-parser {parser}" if parser else "none (model family not known)")
    )
    return _Choice("vllm", settings, seqs, rule, fit)


# --- the decision ----------------------------------------------------------

_Evaluator = Callable[[HardwareReport, ModelSpec, frozenset[str], Overrides], _Choice | Rejected]
_EVALUATORS: dict[str, _Evaluator] = {
    "vllm": _vllm,
    "xllamacpp": _xllamacpp,
    "llama-cpp-python": _llama_cpp_python,
}


def _refusal(model: ModelSpec, rejected: list[Rejected]) -> str:
    tried = [r for r in rejected if r.evaluated]
    short = [(r, r.fit) for r in tried if r.fit is not None and not r.fit.fits]
    if not short:
        reasons = "; ".join(f"{r.engine}: {r.reason}" for r in tried)
        return f"no engine can serve {model.name}: {reasons}."
    best, fit = min(short, key=lambda pair: pair[1].shortfall_bytes)
    return (
        f"{model.name} does not fit: it needs {_gib(fit.required_bytes)} (weights "
        f"{_gib(fit.weights_bytes)} + KV cache {_gib(fit.kv_bytes)} for {fit.ctx} tokens × "
        f"{fit.slots} slot{'s' if fit.slots > 1 else ''} + overhead "
        f"{_gib(fit.overhead_bytes + fit.reserve_bytes)}), but the closest option, "
        f"{best.engine} in {fit.where}, has {_gib(fit.available_bytes)}: short by "
        f"{_gib(fit.shortfall_bytes)}."
    )


def plan(
    hardware: HardwareReport,
    model: ModelSpec | None,
    engine: str | None = None,
    installed: Collection[str] | None = None,
    attach_url: str | None = None,
    overrides: Overrides | None = None,
) -> Plan:
    """Choose and configure an engine. Pass ``installed`` to make the call fully pure.

    ``model`` may be None only with ``attach_url`` (the attached engine names its models).
    """
    if attach_url or engine == "attach":
        if not attach_url:
            return Plan(
                engine=None,
                rule="--engine attach needs --attach URL",
                model=model,
                refusal="--engine attach was requested without --attach URL",
            )
        # --parallel states the attached engine's concurrency; without it, a few at once.
        # Its slots are what they are: headroom is carved out of them, one slot always left.
        slots = overrides.parallel if overrides and overrides.parallel else ATTACH_CAPACITY
        spare = min(overrides.headroom if overrides else 0, slots - 1)
        return Plan(
            engine="attach",
            settings=AttachSettings(url=attach_url),
            capacity=slots - spare,
            headroom=spare,
            model=model,
            rule="--attach URL given → proxy the OpenAI-compatible engine already "
            "running there; the runner probes it but does not manage its process",
        )
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}, attach")
    if model is None:
        raise ValueError("a model is required unless an engine is attached")
    ov = overrides or Overrides()
    have = installed_engines() if installed is None else frozenset(installed)
    chosen: _Choice | None = None
    rejected: list[Rejected] = []
    for name in ENGINES:
        if engine is not None and name != engine:
            rejected.append(
                Rejected(engine=name, reason=f"not requested (--engine {engine})", evaluated=False)
            )
            continue
        if engine is None and name == "llama-cpp-python":
            rejected.append(
                Rejected(
                    engine=name,
                    evaluated=False,
                    reason="used only when "
                    "requested (--engine llama-cpp-python): it serves one "
                    "request at a time",
                )
            )
            continue
        outcome = _EVALUATORS[name](hardware, model, have, ov)
        if isinstance(outcome, Rejected):
            rejected.append(outcome)
        elif chosen is None:
            chosen = outcome
            rejected.extend(outcome.also_rejected)
        else:
            rejected.append(
                Rejected(
                    engine=name,
                    fit=outcome.fit,
                    reason=(f"would also work, but {chosen.engine} comes first for this model"),
                )
            )
    if chosen is None:
        refusal = _refusal(model, rejected)
        missing = any(
            r.engine == "xllamacpp" and r.reason.startswith("not installed") for r in rejected
        )
        if engine is None and missing and "llama-cpp-python" in have:
            # It is never chosen unasked (one request at a time), but it may be all there is.
            refusal += (
                " llama-cpp-python is installed: --engine llama-cpp-python serves this model "
                "one request at a time."
            )
        return Plan(
            engine=None,
            rule="no engine can serve this model",
            rejected=rejected,
            model=model,
            refusal=refusal,
        )
    if ov.headroom:
        chosen = _with_headroom(chosen, ov.headroom)
    return Plan(
        engine=chosen.engine,
        settings=chosen.settings,
        capacity=chosen.capacity,
        headroom=chosen.headroom,
        rule=chosen.rule,
        fit=chosen.fit,
        rejected=rejected,
        model=model,
    )


def _with_headroom(chosen: _Choice, extra: int) -> _Choice:
    """Give the engine ``extra`` slots beyond the advertised capacity, if they fit.

    llama.cpp gets whole slots (their KV cache is in the fit); vLLM only a
    higher ``max_num_seqs``, its KV cache being shared by all sequences. A
    one-request engine (llama-cpp-python) has no slots to add.
    """
    s = chosen.settings
    if isinstance(s, XllamacppSettings):
        fit = chosen.fit.model_copy(update={"slots": s.slots + extra})
        if not fit.fits:
            rule = f"{chosen.rule}; no fair-headroom slot: {extra} more would not fit"
            return replace(chosen, rule=rule)
        settings: XllamacppSettings | VllmSettings = s.model_copy(update={"slots": s.slots + extra})
    elif isinstance(s, VllmSettings):
        fit, settings = chosen.fit, s.model_copy(update={"max_num_seqs": s.max_num_seqs + extra})
    else:
        return chosen
    rule = (
        f"{chosen.rule}; +{extra} fair-headroom slot{'s' if extra > 1 else ''} for tenants "
        "with nothing in flight"
    )
    return replace(chosen, settings=settings, fit=fit, headroom=extra, rule=rule)
