"""Models and aliases, and the playground that streams a chat through the control plane's own
API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from outpost.control_plane.api.deps import AppStateDep, Caller
from outpost.control_plane.api.openai import Inference, chat_completions, list_models
from outpost.control_plane.console.deps import PlaygroundUserDep, ViewUserDep, render
from outpost.control_plane.console.inference import console_caller, tenant_policy
from outpost.control_plane.console.queries import served_models
from outpost.control_plane.openai.protocol import ChatCompletionRequest
from outpost.control_plane.state import AppState

router = APIRouter(include_in_schema=False)


async def _catalog(state: AppState, tenant_id: str) -> list[dict[str, Any]]:
    """Every model this tenant may call now (any tenant's runner, within its residency rules), then
    the ones its own runners served before going offline."""
    async with state.db.session() as session:
        policy = await tenant_policy(session, tenant_id)
        stored = await served_models(session, tenant_id)
    listed = await list_models(
        state, Caller(tenant_id=tenant_id, api_key_id="", scopes=frozenset()), policy
    )
    own = {r.runner_id: r.name for r in state.hub.runners.values() if r.tenant_id == tenant_id}
    by_root: dict[str, dict[str, Any]] = {}
    for entry in listed["data"]:
        root = by_root.setdefault(
            entry["root"],
            {
                "name": entry["root"],
                "aliases": [],
                "engines": entry["engines"],
                "endpoints": entry["endpoints"],
                "context_length": entry["context_length"],
                "runners": entry["runners"],
                "own_runners": [],
                "quantization": None,
                "available": True,
            },
        )
        if entry["id"] != entry["root"]:
            root["aliases"].append(entry["id"])
    for runner in state.hub.runners.values():
        for m in runner.models:
            if m.name in by_root and runner.runner_id in own:
                by_root[m.name]["own_runners"].append(own[runner.runner_id])
                by_root[m.name]["quantization"] = m.quantization
    for model, row in stored:
        if model.name not in by_root:
            by_root[model.name] = {
                "name": model.name,
                "aliases": list(model.aliases or []),
                "engines": [model.engine],
                "endpoints": [],
                "context_length": model.context_length,
                "runners": 0,
                "own_runners": [row.name],
                "quantization": model.quantization,
                "available": False,
            }
    return sorted(by_root.values(), key=lambda m: (not m["available"], m["name"]))


@router.get("/models")
async def models_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return render(
        request, "models.html", user, active="/models", models=await _catalog(state, user.tenant_id)
    )


@router.get("/playground")
async def playground_page(
    request: Request,
    state: AppStateDep,
    user: ViewUserDep,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    catalog = [m for m in await _catalog(state, user.tenant_id) if m["available"]]
    names = [n for m in catalog for n in (m["name"], *m["aliases"])]
    own = {r.runner_id: r.name for r in state.hub.runners.values() if r.tenant_id == user.tenant_id}
    return render(
        request,
        "playground.html",
        user,
        active="/playground",
        models=names,
        runner_names=own,
        selected=model if model in names else (names[0] if names else None),
        max_tokens_limit=state.settings.max_tokens_limit,
    )


class PlaygroundMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class PlaygroundChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[PlaygroundMessage] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.7, ge=0, le=2)


@router.post("/playground/chat")
async def playground_chat(
    body: PlaygroundChatIn, request: Request, state: AppStateDep, user: PlaygroundUserDep
) -> Response:
    """A streamed chat completion, as ``POST /v1/chat/completions`` with the user's console key."""
    async with state.db.session() as session:
        caller, policy = await console_caller(session, user)
        await session.commit()
    chat = ChatCompletionRequest.model_validate(
        {
            "model": body.model,
            "messages": [m.model_dump() for m in body.messages],
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return await chat_completions(chat, request, Inference(state, caller, policy))
