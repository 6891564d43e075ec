"""``control-plane pools``: runner pools and grants from the operator's shell (docs/security.md).

Works on the database directly, like ``keys create``; the API (``/api/pools``)
offers the same to admin keys. Every change is audited with the operator as
actor. ``pools operator`` marks the platform operator tenant, the one role
above tenant admin: only it may grant a pool to every tenant (``--to '*'``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from outpost.control_plane.actions.pools import (
    add_pool,
    find_pool,
    give_grant,
    set_refuse_shared,
    take_back_grant,
)
from outpost.control_plane.actions.runners import find_runner, set_runner_settings
from outpost.control_plane.actions.tenants import set_platform_operator
from outpost.control_plane.api.pools import grant_out
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db
from outpost.control_plane.db.engine import Database
from outpost.control_plane.store.pools import default_pool, list_grants, list_pools
from outpost.control_plane.store.tenants import get_or_create_tenant

__all__ = ["pools_app", "runners_set"]

pools_app = typer.Typer(
    help="Runner pools and grants: which tenants' requests may reach which runners.",
    no_args_is_help=True,
)
err = Console(stderr=True)
TenantOpt = Annotated[str, typer.Option(help="Tenant name (created if missing).")]


def _print(value: Any) -> None:
    print(json.dumps(value, sort_keys=True, default=str))


@pools_app.command("create")
def pools_create(
    name: Annotated[str, typer.Argument(help="Pool name, unique in the tenant.")],
    tenant: TenantOpt = "default",
) -> None:
    """Create a pool; prints it as JSON."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            pool = await add_pool(session, t.id, name, actor=operator_actor())
            await session.commit()
            return {"id": pool.id, "name": pool.name, "tenant_id": t.id}

    _print(run_with_db(go))


@pools_app.command("list")
def pools_list(
    tenant: TenantOpt = "default",
    as_json: Annotated[
        bool,
        typer.Option("--json", help="The same JSON object: accepted, as by every listing."),
    ] = False,
) -> None:
    """The tenant's pools and the grants of or to it, as JSON."""
    del as_json  # the listing nests grants under the tenant: JSON is its one form

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            await default_pool(session, t.id)
            pools = [{"id": p.id, "name": p.name} for p in await list_pools(session, t.id)]
            grants = [
                grant_out(g, p, t.id).model_dump(mode="json")
                for g, p in await list_grants(session, t.id)
            ]
            await session.commit()
            return {"tenant_id": t.id, "pools": pools, "grants": grants}

    _print(run_with_db(go))


@pools_app.command("grant")
def pools_grant(
    pool: Annotated[str, typer.Argument(help="Pool name or id of --tenant.")],
    to: Annotated[
        str,
        typer.Option(
            "--to", help="Grantee tenant name or id; '*': every tenant (platform operator only)."
        ),
    ],
    tenant: TenantOpt = "default",
) -> None:
    """Let another tenant's requests be routed to a pool; prints the grant as JSON."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            owner = await get_or_create_tenant(session, tenant)
            if to != "*":
                await get_or_create_tenant(session, to)
            row = (
                await default_pool(session, owner.id)
                if pool == "default"
                else await find_pool(session, owner.id, pool)
            )
            made = await give_grant(session, owner, row, to, actor=operator_actor())
            await session.commit()
            return grant_out(made, row, owner.id).model_dump(mode="json")

    _print(run_with_db(go))


@pools_app.command("revoke")
def pools_revoke(
    grant_id: Annotated[str, typer.Argument(help="Grant id (see pools list).")],
    tenant: TenantOpt = "default",
) -> None:
    """Revoke a grant, as the pool's owner or its grantee."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            made = await take_back_grant(session, t, grant_id, actor=operator_actor())
            await session.commit()
            return {"id": made.id, "revoked_at": made.revoked_at}

    _print(run_with_db(go))


@pools_app.command("sharing")
def pools_sharing(
    refuse: Annotated[
        bool,
        typer.Option("--refuse/--accept", help="Refuse every shared pool, or accept grants again."),
    ],
    tenant: TenantOpt = "default",
) -> None:
    """Refuse or accept pools other tenants grant to this one."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            await set_refuse_shared(session, t, refuse, actor=operator_actor())
            await session.commit()
            return {"tenant": tenant, "refuse_shared_pools": refuse}

    _print(run_with_db(go))


@pools_app.command("operator")
def pools_operator(
    tenant: Annotated[str, typer.Argument(help="Tenant name (created if missing).")],
    off: Annotated[bool, typer.Option("--off", help="Take the role away.")] = False,
) -> None:
    """Make a tenant the platform operator (may grant pools to every tenant, see and revoke any
    grant)."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            await set_platform_operator(session, t, not off, actor=operator_actor())
            await session.commit()
            return {"tenant": tenant, "platform_operator": not off}

    _print(run_with_db(go))


def runners_set(
    runner_id: Annotated[str, typer.Argument(help="Runner id.")],
    labels: Annotated[
        str | None,
        typer.Option(help="Residency labels, e.g. '{\"site\": \"lab-1\"}'; '{}' clears."),
    ] = None,
    usd_per_hour: Annotated[float | None, typer.Option(help="Price, $/hour (0-1000).")] = None,
    pool: Annotated[
        str | None, typer.Option(help="Move to this pool of the runner's tenant.")
    ] = None,
) -> None:
    """Set what only the owner decides about a runner: residency labels, price, pool."""
    try:
        parsed = json.loads(labels) if labels is not None else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--labels is not JSON: {exc}") from None
    if parsed is not None and (
        not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values())
    ):
        raise typer.BadParameter("--labels must be an object of strings")

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            runner = await find_runner(session, None, runner_id)
            await set_runner_settings(
                session,
                runner,
                actor=operator_actor(),
                labels=parsed,
                usd_per_hour=usd_per_hour,
                pool=pool,
            )
            await session.commit()
            return {
                "id": runner.id,
                "pool_id": runner.pool_id,
                "labels": runner.labels,
                "cost": runner.cost,
            }

    _print(run_with_db(go))
