"""Deployments: the tenant's deployed models, their replicas' progress, create, scale, delete.

Writes go through ``control_plane.actions.deployments``, as the API's and the CLI's do;
the form's values pass the same :class:`DeploymentSpec` checks as an API body.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from outpost.control_plane.actions.deployments import (
    DeploymentSpec,
    create_deployment,
    delete_deployment,
    scale_deployment,
)
from outpost.control_plane.api.deployments import deployment_out, static_models
from outpost.control_plane.api.deps import AppStateDep
from outpost.control_plane.api.errors import http_status
from outpost.control_plane.console.deps import (
    ConsoleUser,
    DeploymentsPostDep,
    ViewUserDep,
    render,
)
from outpost.control_plane.deployments.compare import compare_deployments
from outpost.control_plane.domain_errors import DomainError, Invalid
from outpost.control_plane.state import AppState
from outpost.control_plane.store.deployments import list_deployments, replicas_by_deployment
from outpost.control_plane.store.pools import default_pool, list_pools

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

#: The comparison's window on this page (the API takes any, docs/api.md).
COMPARE_WINDOW_S = 3600
#: Shared names compared on the page at most (each is one query over request records).
MAX_COMPARED = 5
#: Replica states still moving: the page refreshes itself while one is shown.
_MOVING = frozenset({"pending", "downloading", "loading", "draining"})


async def _page(
    request: Request, state: AppState, user: ConsoleUser, *, status: int = 200, **extra: Any
) -> Response:
    async with state.db.session() as session:
        await default_pool(session, user.tenant_id)
        pools = await list_pools(session, user.tenant_id)
        rows = await list_deployments(session, user.tenant_id)
        replicas = await replicas_by_deployment(session, [d.id for d in rows])
        # A/B: names two or more live deployments share, side by side (the first few).
        shared = Counter(d.name for d in rows if d.status == "active")
        compared = {
            name: await compare_deployments(session, user.tenant_id, name, COMPARE_WINDOW_S)
            for name in sorted(n for n, c in shared.items() if c > 1)[:MAX_COMPARED]
        }
        await session.commit()
    deployments = [deployment_out(d, replicas[d.id]) for d in rows]
    moving = any(r["state"] in _MOVING for d in deployments for r in d["replica_status"])
    return render(
        request,
        "deployments.html",
        user,
        status=status,
        active="/deployments",
        deployments=deployments,
        static=static_models(state, {p.id for p in pools}),
        pools=pools,
        compared=compared,
        compare_window_s=COMPARE_WINDOW_S,
        refresh=moving or any(d["status"] == "deleting" for d in deployments),
        **extra,
    )


@router.get("/deployments")
async def deployments_page(request: Request, state: AppStateDep, user: ViewUserDep) -> Response:
    return await _page(request, state, user)


def _options(text: str) -> dict[str, bool | int | float | str]:
    """``ctx=2048, parallel=1`` as a dict of scalars (the runner's allow-list decides)."""
    found: dict[str, bool | int | float | str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise Invalid(f"Engine option {part!r} is not key=value.", param="engine_options")
        value = value.strip()
        parsed: bool | int | float | str = value
        if value in ("true", "false"):
            parsed = value == "true"
        else:
            for kind in (int, float):
                try:
                    parsed = kind(value)
                    break
                except ValueError:
                    pass
        found[key.strip()] = parsed
    return found


def _spec(form: Any) -> DeploymentSpec:
    kind = form.get("source_kind", "path")
    source: dict[str, Any] = {"kind": kind}
    if kind == "path":
        source["path"] = form.get("path", "").strip()
    elif kind == "url":
        source["url"], source["sha256"] = (
            form.get("url", "").strip(),
            form.get("sha256", "").strip(),
        )
    else:
        source["repo"] = form.get("repo", "").strip()
        source["filename"] = form.get("filename", "").strip() or None
    replicas = int(form.get("replicas") or 1)
    body = {
        "name": form.get("name", "").strip(),
        "aliases": [a.strip() for a in form.get("aliases", "").split(",") if a.strip()],
        "pool": form.get("pool") or None,
        "source": source,
        "engine": form.get("engine", "auto"),
        "engine_options": _options(form.get("engine_options", "")),
        "min_replicas": 0,  # scaled by hand from this page, down to 0 too
        "max_replicas": max(int(form.get("max_replicas") or replicas), replicas, 1),
        "replicas": replicas,
        "weight": float(form.get("weight") or 1),
    }
    try:
        return DeploymentSpec.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "form"
        raise Invalid(f"{where}: {first['msg']}") from None


async def _act(request: Request, state: AppState, post: Any, notice: str, action: Any) -> Response:
    try:
        async with state.db.session() as session:
            await action(session)
            await session.commit()
    except DomainError as exc:
        return await _page(
            request, state, post.user, status=http_status(exc), deploy_error=exc.message
        )
    except ValueError:  # a number field that is not a number
        return await _page(
            request, state, post.user, status=400, deploy_error="Replicas and weight are numbers."
        )
    if state.deployments is not None:
        state.deployments.wake()
    return RedirectResponse(f"/deployments?notice={notice}", status_code=303)


@router.post("/deployments")
async def create(request: Request, state: AppStateDep, post: DeploymentsPostDep) -> Response:
    async def action(session: Any) -> None:
        spec = _spec(post.form)
        await create_deployment(session, post.user.tenant_id, spec, actor=post.user.actor)

    return await _act(request, state, post, "deployment_created", action)


@router.post("/deployments/{deployment_id}/scale")
async def scale(
    deployment_id: str, request: Request, state: AppStateDep, post: DeploymentsPostDep
) -> Response:
    async def action(session: Any) -> None:
        replicas = int(post.form.get("replicas", ""))
        await scale_deployment(
            session, post.user.tenant_id, deployment_id, replicas, actor=post.user.actor
        )

    return await _act(request, state, post, "deployment_scaled", action)


@router.post("/deployments/{deployment_id}/delete")
async def delete(
    deployment_id: str, request: Request, state: AppStateDep, post: DeploymentsPostDep
) -> Response:
    return await _act(
        request,
        state,
        post,
        "deployment_deleted",
        lambda s: delete_deployment(s, post.user.tenant_id, deployment_id, actor=post.user.actor),
    )
