"""``control-plane quotas``: token quotas per tenant and per API key from the operator's shell.

Works on the database directly, like ``keys create``; the API (``/api/quotas``,
``/api/keys/{id}/quotas``) offers the same to keys whose role holds ``limits.write``.
Each ``set`` replaces every quota of its target: an option left out is no limit.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from outpost.control_plane.actions.quotas import set_key_quotas, set_tenant_quotas
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db, tenant_id_named
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Tenant
from outpost.control_plane.store.keys import list_api_keys

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


@quotas_app.command("list")
def quotas_list(
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The quotas of a tenant and of each of its live keys (GET /api/quotas)."""

    async def go(db: Database) -> dict[str, Any]:
        async with db.session() as session:
            tenant_id = await tenant_id_named(session, tenant)
            t = await session.get(Tenant, tenant_id)
            assert t is not None
            keys = await list_api_keys(session, tenant_id)
            return {
                "tenant": {
                    "tokens_per_minute": t.tokens_per_minute,
                    "tokens_per_day": t.tokens_per_day,
                },
                "keys": [
                    {
                        "id": k.id,
                        "name": k.name,
                        "tokens_per_minute": k.tokens_per_minute,
                        "tokens_per_day": k.tokens_per_day,
                        "max_concurrent": k.max_concurrent,
                    }
                    for k in keys
                    if k.revoked_at is None
                ],
            }

    found = run_with_db(go)
    if as_json:
        print(json.dumps(found, sort_keys=True))
        return
    table = Table("key", "name", "tokens/min", "tokens/day", "in flight")
    shown = found["tenant"]
    table.add_row(
        "(tenant)", tenant, _n(shown["tokens_per_minute"]), _n(shown["tokens_per_day"]), "-"
    )
    for k in found["keys"]:
        table.add_row(
            k["id"],
            k["name"],
            _n(k["tokens_per_minute"]),
            _n(k["tokens_per_day"]),
            _n(k["max_concurrent"]),
        )
    Console().print(table)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
