"""Engine adapters, one module each, and the factory that turns a plan into one."""

from __future__ import annotations

from outpost.runner.engines.attach import AttachedEngine
from outpost.runner.engines.base import EngineAdapter, EngineLoad, LaunchSpec, ServedModel
from outpost.runner.engines.llama_cpp_python import LlamaCppPythonEngine
from outpost.runner.engines.vllm import VllmEngine, VllmLoad
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.planning import (
    AttachSettings,
    LlamaCppPythonSettings,
    Plan,
    VllmSettings,
    XllamacppSettings,
)

__all__ = [
    "AttachedEngine",
    "EngineAdapter",
    "EngineLoad",
    "LaunchSpec",
    "LlamaCppPythonEngine",
    "PlanRefusedError",
    "ServedModel",
    "VllmEngine",
    "VllmLoad",
    "XllamacppEngine",
    "build_engine",
    "served_models",
]


class PlanRefusedError(RuntimeError):
    """The plan found no engine that fits; its refusal says why."""


def served_models(plan: Plan) -> tuple[ServedModel, ...]:
    """What the runner advertises for a plan: the model under its public name, with the
    context one request may use (a llama.cpp slot's share, or vLLM's max model length)."""
    if plan.model is None or plan.engine is None:
        return ()
    s = plan.settings
    ctx = (s.ctx_per_slot if isinstance(s, XllamacppSettings)
           else s.max_model_len if isinstance(s, VllmSettings)
           else s.ctx if isinstance(s, LlamaCppPythonSettings)
           else None)  # fmt: skip
    model = plan.model
    tools = (s.tools is not None if isinstance(s, XllamacppSettings)
             else s.tool_call_parser is not None if isinstance(s, VllmSettings)
             else False)  # fmt: skip
    endpoints = ("chat", "completions", "tools") if tools else ("chat", "completions")
    return (ServedModel(name=model.name, engine=plan.engine, context_length=ctx,
                        quantization=model.quantization, endpoints=endpoints),)  # fmt: skip


def build_engine(
    plan: Plan, models: tuple[ServedModel, ...] | None = None, *, api_key: str | None = None
) -> EngineAdapter:
    """The adapter a plan describes. ``models`` overrides the advertised models (an
    attached engine's come from probing its /v1/models); ``api_key`` is for attach only."""
    settings = plan.settings
    if plan.refusal or settings is None:
        raise PlanRefusedError(plan.refusal or "the plan chose no engine")
    served = served_models(plan) if models is None else models
    if isinstance(settings, AttachSettings):
        return AttachedEngine(url=settings.url, models=served,
                              capacity=plan.capacity + plan.headroom,
                              headroom=plan.headroom, api_key=api_key)  # fmt: skip
    if plan.model is None:
        raise PlanRefusedError(f"{plan.engine} needs a model")
    location = plan.model.location
    if isinstance(settings, XllamacppSettings):
        return XllamacppEngine(model_path=location, models=served, capacity=settings.slots,
                               headroom=plan.headroom,
                               ctx=settings.ctx, threads=settings.threads,
                               gpu_layers=settings.gpu_layers, tools=settings.tools)  # fmt: skip
    if isinstance(settings, LlamaCppPythonSettings):
        return LlamaCppPythonEngine(model_path=location, models=served, ctx=settings.ctx,
                                    threads=settings.threads,
                                    gpu_layers=settings.gpu_layers)  # fmt: skip
    return VllmEngine(
        model=location,
        models=served,
        capacity=plan.capacity + plan.headroom,
        headroom=plan.headroom,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
        quantization=settings.quantization,
        served_model_name=served[0].name if served else None,
        max_num_seqs=settings.max_num_seqs,
        gpu_indices=tuple(settings.gpu_indices),
        tool_call_parser=settings.tool_call_parser,
    )
