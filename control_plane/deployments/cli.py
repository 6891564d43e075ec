"""``control-plane deployments``: deploy, change, scale and delete models from the operator's shell.

Works on the database directly, like ``control-plane pools``; a running control
plane's reconciler picks each change up within ``deployment_reconcile_interval_s``.
Every change goes through the actions layer (audited, operator as actor).
``--json`` prints what the API returns (docs/api.md "Deployments").
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from outpost.control_plane.actions.deployments import (
    DeploymentPatch,
    DeploymentSpec,
    change_deployment,
    create_deployment,
    delete_deployment,
    find_deployment,
    scale_deployment,
)
from outpost.control_plane.api.deployments import deployment_out
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db
from outpost.control_plane.db.engine import Database
from outpost.control_plane.deployments.compare import compare_deployments
from outpost.control_plane.domain_errors import Invalid
from outpost.control_plane.store.deployments import (
    list_deployments,
    list_replicas,
    replicas_by_deployment,
)
from outpost.control_plane.store.tenants import get_or_create_tenant

__all__ = ["deployments_app"]

deployments_app = typer.Typer(
    help="Models the control plane deploys onto runners (docs/deployments.md).",
    no_args_is_help=True,
)
# Piped, rich would fold the table to 80 columns and elide the ids one needs to copy.
out = Console(width=None if sys.stdout.isatty() else 200)

TenantOpt = Annotated[str, typer.Option(help="Tenant name (created if missing).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
IdArg = Annotated[str, typer.Argument(help="Deployment id (see deployments list).")]
PathOpt = Annotated[str | None, typer.Option("--path", help="File under the runner's model dir.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="HTTP(S) URL (needs --sha256).")]
ShaOpt = Annotated[str | None, typer.Option("--sha256", help="SHA-256 of the file at --url.")]
HfOpt = Annotated[str | None, typer.Option("--hf-repo", help="Hugging Face repo, org/name.")]
HfRevOpt = Annotated[str | None, typer.Option("--hf-revision", help="Revision of --hf-repo.")]
HfFileOpt = Annotated[str | None, typer.Option("--hf-file", help="GGUF file in --hf-repo.")]
EngineOpt = Annotated[str | None, typer.Option(help="auto | llama.cpp | vllm.")]
OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="Engine option key=value (repeat).")
]
AliasOpt = Annotated[list[str] | None, typer.Option("--alias", help="Another name (repeat).")]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", help="Runner label constraint key=v1,v2 (repeat)."),
]
MinOpt = Annotated[int | None, typer.Option("--min", help="min_replicas.")]
MaxOpt = Annotated[int | None, typer.Option("--max", help="max_replicas.")]
WeightOpt = Annotated[float | None, typer.Option(help="Traffic weight among same-name ones.")]
IdleOpt = Annotated[int | None, typer.Option("--idle-timeout", help="Unload after idle seconds.")]


def _print(value: Any) -> None:
    print(json.dumps(value, sort_keys=True, default=str))


def _scalar(text: str) -> bool | int | float | str:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {item!r} is not key=value")
        found[key] = value
    return found


def _source(
    path: str | None,
    url: str | None,
    sha: str | None,
    hf: str | None,
    rev: str | None,
    f: str | None,
) -> dict[str, Any] | None:
    given = [s for s in (path, url, hf) if s]
    if len(given) > 1:
        raise typer.BadParameter("give one of --path, --url, --hf-repo")
    if path:
        return {"kind": "path", "path": path}
    if url:
        return {"kind": "url", "url": url, "sha256": sha or ""}
    if hf:
        return {"kind": "hf", "repo": hf, "revision": rev, "filename": f}
    return None


def _validated(model: type[DeploymentSpec] | type[DeploymentPatch], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise Invalid(f"{where}: {first['msg']}") from None


@deployments_app.command("list")
def deployments_list(tenant: TenantOpt = "default", as_json: JsonOpt = False) -> None:
    """The tenant's deployments with their replicas."""

    async def go(db: Database) -> list[dict[str, Any]]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            rows = await list_deployments(session, t.id)
            replicas = await replicas_by_deployment(session, [d.id for d in rows])
            await session.commit()
            return [deployment_out(d, replicas[d.id]) for d in rows]

    found = run_with_db(go)
    if as_json:
        _print(found)
        return
    table = Table("id", "name", "engine", "ready/wanted", "weight", "gen", "status", "replicas")
    for d in found:
        states = ", ".join(f"{r['state']}@{r['runner_id']}" for r in d["replica_status"])
        table.add_row(
            d["id"],
            d["name"],
            d["engine"],
            f"{d['ready_replicas']}/{d['replicas']}",
            f"{d['weight']:g}",
            str(d["generation"]),
            d["status"],
            states or "-",
        )
    out.print(table)


@deployments_app.command("show")
def deployments_show(deployment_id: IdArg, tenant: TenantOpt = "default") -> None:
    """One deployment with each replica's state and progress, as JSON."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            row = await find_deployment(session, t.id, deployment_id)
            return deployment_out(row, await list_replicas(session, row.id))

    _print(run_with_db(go))


@deployments_app.command("create")
def deployments_create(
    name: Annotated[str, typer.Argument(help="The public model name clients ask for.")],
    path: PathOpt = None,
    url: UrlOpt = None,
    sha256: ShaOpt = None,
    hf_repo: HfOpt = None,
    hf_revision: HfRevOpt = None,
    hf_file: HfFileOpt = None,
    engine: EngineOpt = "auto",
    option: OptionOpt = None,
    alias: AliasOpt = None,
    label: LabelOpt = None,
    pool: Annotated[str | None, typer.Option(help="Pool name or id (default: default).")] = None,
    min_replicas: MinOpt = 1,
    max_replicas: MaxOpt = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas wanted now.")] = None,
    weight: WeightOpt = 1.0,
    idle_timeout: IdleOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Deploy a model onto the tenant's runners; prints the deployment as JSON."""
    source = _source(path, url, sha256, hf_repo, hf_revision, hf_file)
    if source is None:
        raise typer.BadParameter("give a source: --path, --url with --sha256, or --hf-repo")
    body: dict[str, Any] = {
        "name": name,
        "source": source,
        "engine": engine,
        "engine_options": {k: _scalar(v) for k, v in _pairs(option, "--option").items()},
        "aliases": alias or [],
        "labels": {k: v.split(",") for k, v in _pairs(label, "--label").items()},
        "pool": pool,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas if max_replicas is not None else max(min_replicas or 1, 1),
        "replicas": replicas,
        "weight": weight,
        "idle_timeout_s": idle_timeout,
    }

    async def go(db: Database) -> dict[str, Any]:
        spec = _validated(DeploymentSpec, body)
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            row = await create_deployment(session, t.id, spec, actor=operator_actor())
            await session.commit()
            return deployment_out(row, [])

    _print(run_with_db(go))


@deployments_app.command("update")
def deployments_update(
    deployment_id: IdArg,
    path: PathOpt = None,
    url: UrlOpt = None,
    sha256: ShaOpt = None,
    hf_repo: HfOpt = None,
    hf_revision: HfRevOpt = None,
    hf_file: HfFileOpt = None,
    engine: EngineOpt = None,
    option: OptionOpt = None,
    alias: AliasOpt = None,
    label: LabelOpt = None,
    min_replicas: MinOpt = None,
    max_replicas: MaxOpt = None,
    weight: WeightOpt = None,
    idle_timeout: IdleOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Change a deployment; a new source, engine, options or aliases roll its replicas."""
    body: dict[str, Any] = {
        "source": _source(path, url, sha256, hf_repo, hf_revision, hf_file),
        "engine": engine,
        "engine_options": (
            {k: _scalar(v) for k, v in _pairs(option, "--option").items()} if option else None
        ),
        "aliases": alias,
        "labels": {k: v.split(",") for k, v in _pairs(label, "--label").items()} if label else None,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "weight": weight,
        "idle_timeout_s": idle_timeout,
    }

    async def go(db: Database) -> dict[str, Any]:
        patch = _validated(DeploymentPatch, {k: v for k, v in body.items() if v is not None})
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            row = await change_deployment(
                session, t.id, deployment_id, patch, actor=operator_actor()
            )
            await session.commit()
            return deployment_out(row, await list_replicas(session, row.id))

    _print(run_with_db(go))


@deployments_app.command("scale")
def deployments_scale(
    deployment_id: IdArg,
    replicas: Annotated[int, typer.Argument(help="Replicas wanted, within min..max.")],
    tenant: TenantOpt = "default",
) -> None:
    """Set the number of replicas; prints the deployment as JSON."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            row = await scale_deployment(
                session, t.id, deployment_id, replicas, actor=operator_actor()
            )
            await session.commit()
            return deployment_out(row, await list_replicas(session, row.id))

    _print(run_with_db(go))


@deployments_app.command("delete")
def deployments_delete(deployment_id: IdArg, tenant: TenantOpt = "default") -> None:
    """Undeploy every replica and forget the deployment."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            await delete_deployment(session, t.id, deployment_id, actor=operator_actor())
            await session.commit()
            return {"id": deployment_id, "deleted": True}

    _print(run_with_db(go))


@deployments_app.command("compare")
def deployments_compare(
    name: Annotated[str, typer.Argument(help="The public name the deployments share.")],
    window_s: Annotated[int, typer.Option("--window-s", min=60, max=30 * 86400)] = 3600,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Deployments sharing a name side by side (A/B): latency, tokens/s, errors, cost."""

    async def go(db: Database) -> list[dict[str, Any]]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            rows = await compare_deployments(session, t.id, name, window_s)
            await session.commit()
            return rows

    rows = run_with_db(go)
    if as_json:
        _print(rows)
        return
    table = Table(
        "id",
        "weight",
        "requests",
        "error rate",
        "TTFT p50/p95 ms",
        "ITL p50 ms",
        "tok/s",
        "$/1M",
        "bias probe (flagged)",
    )
    for r in rows:
        table.add_row(
            r["id"],
            f"{r['weight']:g}",
            str(r["requests"]),
            "-" if r["error_rate"] is None else f"{r['error_rate']:.2%}",
            f"{r['ttft_ms']['p50']} / {r['ttft_ms']['p95']}",
            str(r["itl_ms"]["p50"]),
            str(r["tokens_per_s"]["p50"]),
            str(r["usd_per_1m_tokens"]),
            _probe_cell(r["bias_probe"]),
        )
    out.print(table)


def _probe_cell(probe: dict[str, Any] | None) -> str:
    """The latest bias-probe run of a deployment, for the compare table."""
    if probe is None:
        return "-"
    flagged = ", ".join(probe["flagged_attributes"]) or "none"
    shared = ", shared name" if probe["shared"] else ""
    return f"{probe['run_id']} ({flagged}{shared})"
