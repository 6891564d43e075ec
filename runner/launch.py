"""Turn settings into a ready-to-run Agent: detect hardware, plan, build the engine adapter.

``runner plan`` prints the same decision this module acts on.
"""

from __future__ import annotations

import dataclasses
import logging

import httpx
from rich.console import Console

from outpost.runner.agent import Agent, AgentConfig
from outpost.runner.cost import cost_model
from outpost.runner.engine_process import EngineRegistry
from outpost.runner.engines import PlanRefusedError, build_engine, served_models
from outpost.runner.engines.base import ServedModel
from outpost.runner.engines.xllamacpp import XllamacppEngine
from outpost.runner.gguf_meta import resolve_model
from outpost.runner.hardware import detect
from outpost.runner.model_refs import resolve_models
from outpost.runner.models import embedded_model_path
from outpost.runner.multiplan import plan_models
from outpost.runner.planning import DEFAULT_HEADROOM, Overrides, plan
from outpost.runner.settings import RunnerSettings

__all__ = ["EMBEDDED_ALIASES", "build_agent"]

log = logging.getLogger("outpost.runner")

#: Short names the embedded model also answers to.
EMBEDDED_ALIASES = ("smollm2",)


def build_agent(settings: RunnerSettings, console: Console) -> Agent:
    # Engines a previous run left behind (killed before it could stop them: kill -9, OOM,
    # power) go first: what they hold in memory would otherwise shrink the plan below.
    if stale := EngineRegistry(settings.state_dir / "engines").stop_stale():
        console.print(
            f"[yellow]stopped {stale} engine process(es) left behind by a previous run[/]"
        )
    hardware = detect()
    api_key = settings.attach_api_key.get_secret_value() if settings.attach_api_key else None
    headroom = (
        settings.headroom
        if settings.headroom is not None
        else (0 if settings.attach else DEFAULT_HEADROOM)
    )
    overrides = Overrides(settings.parallel, settings.ctx, settings.threads or None, headroom)
    if settings.attach:
        decisions = [
            plan(
                hardware,
                None,
                engine=settings.engine,
                attach_url=settings.attach,
                overrides=overrides,
            )
        ]
    else:
        specs = (
            resolve_models(settings.model)
            if settings.model
            else [resolve_model(embedded_model_path())]
        )
        if len(specs) > 1 and (settings.served_model_name or settings.model_alias):
            raise ValueError(
                "--served-model-name and --model-alias name a single model; with several "
                "models name each one as --model NAME=PATH_OR_ID"
            )
        decisions = plan_models(hardware, specs, engine=settings.engine, overrides=overrides)
    for decision in decisions:
        if decision.refusal:
            raise PlanRefusedError(decision.refusal)
        name = decision.model.name if decision.model else settings.attach
        console.print(
            f"plan for {name}: [bold]{decision.engine}[/] — {decision.rule}", highlight=False
        )
    adapters = []
    for decision in decisions:
        models = _advertised(settings, served_models(decision), api_key)
        adapter = build_engine(decision, models, api_key=api_key)
        if settings.embedding:
            _enable_embeddings(adapter, attached=bool(settings.attach))
        if settings.rerank:
            _enable_rerank(adapter, attached=bool(settings.attach), embedding=settings.embedding)
        adapters.append(adapter)
    headers = adapters[0].headers() if hasattr(adapters[0], "headers") else {}
    cost = cost_model(settings, hardware)
    return Agent(
        AgentConfig(
            settings=settings,
            adapters=adapters,
            hardware=hardware,
            cost=cost,
            engine_headers=headers,
            plans=decisions,
        ),
        console,
    )


def _advertised(
    settings: RunnerSettings, planned: tuple[ServedModel, ...], api_key: str | None
) -> tuple[ServedModel, ...]:
    if settings.attach:
        planned = _probe_attached(settings.attach, api_key)
    if not planned:
        return planned
    first = planned[0]
    if settings.served_model_name:
        first = dataclasses.replace(first, name=settings.served_model_name)
    elif not settings.model and not settings.attach:
        first = dataclasses.replace(first, aliases=EMBEDDED_ALIASES)
    if settings.model_alias:
        first = dataclasses.replace(
            first, aliases=tuple(dict.fromkeys([*first.aliases, *settings.model_alias]))
        )
    if settings.embedding:
        first = dataclasses.replace(
            first, endpoints=tuple(dict.fromkeys([*first.endpoints, "embeddings"]))
        )
    if settings.rerank:
        first = dataclasses.replace(
            first, endpoints=tuple(dict.fromkeys([*first.endpoints, "rerank"]))
        )
    return (first, *planned[1:])


def _enable_rerank(adapter: object, *, attached: bool, embedding: bool) -> None:
    # llama.cpp answers /v1/rerank only in reranking mode (rank pooling), which replaces the
    # mean pooling embeddings need; an attached engine (vLLM's score/rerank) is taken at its word.
    if isinstance(adapter, XllamacppEngine):
        if embedding:
            raise RuntimeError("--rerank and --embedding need different llama.cpp poolings")
        adapter.rerank = True
    elif not attached:
        raise RuntimeError(
            f"--rerank needs the xllamacpp engine or --attach, not {type(adapter).__name__}"
        )


def _enable_embeddings(adapter: object, *, attached: bool) -> None:
    # llama.cpp answers /v1/embeddings only in embedding mode; an attached
    # engine is taken at the operator's word.
    if isinstance(adapter, XllamacppEngine):
        adapter.embedding = True
    elif not attached:
        raise RuntimeError(
            f"--embedding needs the xllamacpp engine or --attach, not {type(adapter).__name__}"
        )


def _probe_attached(url: str, api_key: str | None) -> tuple[ServedModel, ...]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10)
        resp.raise_for_status()
        ids = [m["id"] for m in resp.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(
            f"cannot list the models of the attached engine at {url}: {exc}"
        ) from None
    if not ids:
        raise RuntimeError(f"the attached engine at {url} serves no models")
    return tuple(ServedModel(name=i, engine="attach") for i in ids)
