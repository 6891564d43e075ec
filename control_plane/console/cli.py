"""``control-plane users ...``: console accounts, made from the shell of the control plane.

Passwords never travel as flags (they would sit in shell history and in the
process list): they come from ``OUTPOST_USER_PASSWORD`` or a hidden prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from outpost.control_plane.actions import users as user_actions
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.cli_db import run_with_db
from outpost.control_plane.console.config import ConsoleSettings
from outpost.control_plane.console.passwords import (
    PasswordPolicyError,
    check_password_policy,
    hash_password,
)
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import Tenant, User
from outpost.control_plane.permissions import ROLES
from outpost.control_plane.store.tenants import get_or_create_tenant
from outpost.control_plane.store.users import list_users

__all__ = ["PASSWORD_ENV", "users_app"]

PASSWORD_ENV = "OUTPOST_USER_PASSWORD"
users_app = typer.Typer(help="Console users (admin or viewer of one tenant).", no_args_is_help=True)
console = Console(stderr=True)


def _password() -> str:
    """From the environment, or asked for twice without echo; checked against the length policy."""
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        check_password_policy(password, ConsoleSettings().min_password_length)
    except PasswordPolicyError as exc:
        console.print(f"[red]password:[/] {exc}")
        raise typer.Exit(2) from None
    return password


@users_app.command("create")
def create(
    email: Annotated[str, typer.Argument(help="The user's email address (their sign-in name).")],
    role: Annotated[
        str,
        typer.Option(
            help="owner, admin, operator, developer, viewer or auditor (docs/security.md)."
        ),
    ] = "viewer",
    tenant: Annotated[str, typer.Option(help="Tenant name (created if missing).")] = "default",
) -> None:
    """Create a console user. The password comes from $OUTPOST_USER_PASSWORD or a prompt, never
    a flag."""
    if role not in ROLES:
        console.print(f"[red]--role must be one of {', '.join(ROLES)}[/]")
        raise typer.Exit(2)
    password = _password()
    password_hash = hash_password(password)

    async def go(db: Database) -> str:
        async with db.session() as session:
            t = await get_or_create_tenant(session, tenant)
            user = await user_actions.add_user(
                session,
                t.id,
                email=email,
                password_hash=password_hash,
                role=role,
                actor=operator_actor(),
            )
            await session.commit()
            return user.id

    user_id = run_with_db(go)
    console.print(f"created {role} [bold]{email}[/] in tenant {tenant!r}")
    print(user_id)


@users_app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (name).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Users, their tenant and role, and whether they are locked out (never a password hash)."""

    async def go(db: Database) -> list[tuple[Any, str]]:
        async with db.session() as session:
            tenants = {
                t.id: t.name for t in (await session.execute(Tenant.__table__.select())).all()
            }
            tenant_id = (
                next((i for i, n in tenants.items() if n == tenant), "-") if tenant else None
            )
            return [
                (u, tenants.get(u.tenant_id, u.tenant_id))
                for u in await list_users(session, tenant_id)
            ]

    for user, tenant_name in run_with_db(go):
        if as_json:
            print(
                json.dumps(
                    {
                        "id": user.id,
                        "email": user.email,
                        "role": user.role,
                        "tenant": tenant_name,
                        "locked_until": user.locked_until,
                    },
                    default=str,
                )
            )
            continue
        locked = f"  locked until {user.locked_until:%Y-%m-%d %H:%M}" if user.locked_until else ""
        print(f"{user.email}  {user.role}  tenant={tenant_name}  id={user.id}{locked}")


@users_app.command("unlock")
def unlock(email: Annotated[str, typer.Argument(help="The locked user's email.")]) -> None:
    """Clear a lockout (after too many failed sign-ins) before it expires."""
    _update(email, lambda session, user: user_actions.unlock(session, user, actor=operator_actor()))
    console.print(f"unlocked {email}")


@users_app.command("set-password")
def set_password_(email: Annotated[str, typer.Argument(help="The user's email.")]) -> None:
    """Replace a user's password (from $OUTPOST_USER_PASSWORD or a prompt); their sessions end."""
    password_hash = hash_password(_password())
    _update(
        email,
        lambda session, user: user_actions.change_password(
            session, user, password_hash, actor=operator_actor()
        ),
    )
    console.print(f"password changed for {email}")


def _update(email: str, change: Callable[[Any, User], Awaitable[None]]) -> None:
    async def go(db: Database) -> None:
        async with db.session() as session:
            await change(session, await user_actions.find_user_by_email(session, email))
            await session.commit()

    run_with_db(go)
