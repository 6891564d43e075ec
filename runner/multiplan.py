"""Several models on one runner: plan them in order, each in the memory the ones before left.

Every model gets the same :func:`runner.planning.plan` as a lone model, on a
hardware report from which the earlier models' estimates were subtracted. A
model that no longer fits is refused, saying which models took the memory and
whether it would fit alone. Pure, like ``plan``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from outpost.runner.gguf_meta import ModelSpec
from outpost.runner.hardware import GpuInfo, HardwareReport
from outpost.runner.planning import (
    GIB,
    LlamaCppPythonSettings,
    Overrides,
    Plan,
    VllmSettings,
    XllamacppSettings,
    offload_gpus,
    plan,
)

__all__ = ["memory_used", "plan_models", "remaining_after"]


def memory_used(result: Plan) -> int:
    """Bytes the planned engine takes: its fit without the reserve kept for the OS."""
    if result.refusal or result.fit is None:
        return 0
    return result.fit.required_bytes - result.fit.reserve_bytes


def _take(gpu: GpuInfo, n: int) -> GpuInfo:
    return gpu.model_copy(update={"memory_free_bytes": max(0, gpu.memory_free_bytes - n)})


def remaining_after(hw: HardwareReport, result: Plan) -> HardwareReport:
    """``hw`` with the memory ``result``'s engine will hold taken out of it."""
    used = memory_used(result)
    settings = result.settings
    if not used or settings is None:
        return hw
    take: dict[tuple[str, int], int] = {}
    ram = 0
    if isinstance(settings, VllmSettings):
        # vLLM preallocates its utilization share of every GPU it runs on.
        for g in hw.gpus_of("nvidia"):
            if g.index in settings.gpu_indices:
                take[(g.vendor, g.index)] = int(
                    settings.gpu_memory_utilization * g.memory_total_bytes
                )
    elif isinstance(settings, XllamacppSettings | LlamaCppPythonSettings) and settings.gpu_layers:
        gpus = offload_gpus(hw)
        if gpus and gpus[0].unified_memory:
            ram = used
        else:  # llama.cpp splits layers across GPUs in proportion to their free memory
            free = sum(g.memory_free_bytes for g in gpus) or 1
            take = {(g.vendor, g.index): used * g.memory_free_bytes // free for g in gpus}
    else:
        ram = used
    gpus = []
    for g in hw.gpus:
        n = take.get((g.vendor, g.index), 0) + (ram if g.unified_memory else 0)
        gpus.append(_take(g, n) if n else g)
    cpu = hw.cpu.model_copy(
        update={"ram_available_bytes": max(0, hw.cpu.ram_available_bytes - ram)}
    )
    return hw.model_copy(update={"cpu": cpu, "gpus": gpus})


def plan_models(
    hardware: HardwareReport,
    models: Sequence[ModelSpec],
    engine: str | None = None,
    installed: Collection[str] | None = None,
    overrides: Overrides | None = None,
) -> list[Plan]:
    """One plan per model, in order; each model is planned in what the earlier ones left."""
    plans: list[Plan] = []
    left = hardware
    for model in models:
        result = plan(left, model, engine=engine, installed=installed, overrides=overrides)
        if result.refusal and plans:
            result = _beside(result, hardware, model, plans, engine, installed, overrides)
        elif result.fit is not None and any(memory_used(p) for p in plans):
            where = f"{result.fit.where} left by {', '.join(_names(plans))}"
            result = result.model_copy(
                update={"fit": result.fit.model_copy(update={"where": where})}
            )
        plans.append(result)
        left = remaining_after(left, result)
    return plans


def _names(plans: list[Plan]) -> list[str]:
    return [p.model.name for p in plans if p.model is not None and memory_used(p)]


def _beside(
    result: Plan,
    hardware: HardwareReport,
    model: ModelSpec,
    before: list[Plan],
    engine: str | None,
    installed: Collection[str] | None,
    overrides: Overrides | None,
) -> Plan:
    """Say that the earlier models took the memory, when that is why ``model`` was refused."""
    alone = plan(hardware, model, engine=engine, installed=installed, overrides=overrides)
    if alone.refusal:
        return result  # it does not fit even alone: its own refusal says why
    taken = ", ".join(
        f"{p.model.name} {memory_used(p) / GIB:.1f} GiB ({p.engine})"
        for p in before
        if p.model is not None and not p.refusal
    )
    refusal = (
        f"not enough memory left for {model.name} beside the models before it ({taken}); "
        f"alone it would fit ({alone.engine}). Serve it on another runner, list it "
        f"first, or lower --parallel/--ctx. {result.refusal}"
    )
    return result.model_copy(update={"refusal": refusal})
