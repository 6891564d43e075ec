"""``control-plane quotas``: token quotas per tenant and per API key from the operator's shell.

Works on the database directly, like ``keys create``; the API (``/api/quotas``,
``/api/keys/{id}/quotas``) offers the same to keys whose role holds ``limits.write``.
Each ``set`` replaces every quota of its target: an option left out is no limit.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from outpost.control_plane.actions.quotas import set_key_quotas, set_tenant_quotas
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db, tenant_id_named
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Tenant

__all__ = ["quotas_app"]

quotas_app = typer.Typer(
    help="Quotas: tokens per minute and per day, requests in flight (docs/security.md).",
    no_args_is_help=True,
)

Tokens = Annotated[
    int | None, typer.Option(min=1, help="Input + output tokens; left out: no limit.")
]


@quotas_app.command("set")
def quotas_set(
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default",
    key: Annotated[
        str | None, typer.Option(help="An API key id (key_...); left out: the whole tenant.")
    ] = None,
    tokens_per_minute: Tokens = None,
    tokens_per_day: Tokens = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="The key's requests in flight (keys only).")
    ] = None,
) -> None:
    """Set the quotas of a tenant, or of one of its keys; prints them as JSON."""
    if key is None and max_concurrent is not None:
        raise typer.BadParameter("--max-concurrent is a key's limit: give --key")

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            tenant_id = await tenant_id_named(session, tenant)
            if key is not None:
                row = await set_key_quotas(
                    session,
                    tenant_id,
                    key,
                    actor=operator_actor(),
                    tokens_per_minute=tokens_per_minute,
                    tokens_per_day=tokens_per_day,
                    max_concurrent=max_concurrent,
                )
                target = row.id
            else:
                t = await session.get(Tenant, tenant_id)
                assert t is not None
                await set_tenant_quotas(
                    session,
                    t,
                    actor=operator_actor(),
                    tokens_per_minute=tokens_per_minute,
                    tokens_per_day=tokens_per_day,
                )
                target = tenant
            await session.commit()
        return {
            "target": target,
            "tokens_per_minute": tokens_per_minute,
            "tokens_per_day": tokens_per_day,
            "max_concurrent": max_concurrent,
        }

    print(json.dumps(run_with_db(go), sort_keys=True))
