"""Turn settings into a ready-to-run Agent: hardware, plan, engine adapter."""

from __future__ import annotations

from rich.console import Console

from runner.agent import Agent, AgentConfig
from runner.engines.base import ServedModel
from runner.engines.xllamacpp import XllamacppEngine
from runner.models import embedded_model_path
from runner.settings import RunnerSettings

__all__ = ["EMBEDDED_MODEL_NAME", "build_agent"]

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"


def build_agent(settings: RunnerSettings, console: Console) -> Agent:
    path = embedded_model_path() if not settings.model else settings.model[0]
    name = settings.served_model_name or (
        EMBEDDED_MODEL_NAME if not settings.model else str(path).rsplit("/", 1)[-1].removesuffix(".gguf").lower())
    parallel = settings.parallel or 4
    adapter = XllamacppEngine(
        model_path=str(path),
        models=(ServedModel(name=name, engine="xllamacpp", context_length=(settings.ctx or 4096) // parallel,
                            quantization="Q4_1" if not settings.model else None,
                            aliases=("smollm2",) if not settings.model else ()),),
        capacity=parallel, ctx=settings.ctx or 4096, threads=settings.threads,
    )
    return Agent(AgentConfig(settings=settings, adapter=adapter), console)
