"""The CLI's one way to open the database and run: migrate, open, run, dispose, map refusals.

Every ``control-plane`` subcommand that touches the database goes through
:func:`run_with_db`. A :class:`~control_plane.domain_errors.DomainError` from an
action becomes one line on stderr and an exit code (:data:`EXIT_CODES`), never
a traceback: a refused value (:class:`Invalid`) exits 2, like click's usage
errors; any other refusal (not found, conflict, forbidden) exits 1, as
``control-plane users`` always has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.domain_errors import DomainError, Invalid, NotFound
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.tenants import get_tenant_by_name

__all__ = ["INVALID", "REFUSED", "exit_code", "run_with_db", "run_with_settings", "tenant_id_named"]

T = TypeVar("T")
err = Console(stderr=True)

#: The exit status of a command refused for anything but a bad value.
REFUSED = 1
#: The exit status of a refused value (also click's, for a malformed option).
INVALID = 2


def exit_code(exc: DomainError) -> int:
    return INVALID if isinstance(exc, Invalid) else REFUSED


def run_with_settings(
    fn: Callable[[Database, Settings], Awaitable[T]], settings: Settings | None = None
) -> T:
    """Migrate to head, then run ``fn(db, settings)`` on a fresh event loop; refusals exit
    non-zero."""
    settings = settings or Settings()
    upgrade_to_head(settings.database_url)

    async def main() -> T:
        db = Database(settings.database_url)
        try:
            return await fn(db, settings)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except DomainError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(exit_code(exc)) from None


def run_with_db(fn: Callable[[Database], Awaitable[T]], settings: Settings | None = None) -> T:
    """:func:`run_with_settings` for commands that need only the database."""
    return run_with_settings(lambda db, _settings: fn(db), settings)


async def tenant_id_named(session: AsyncSession, name: str) -> str:
    """The id of the tenant named ``name``; :class:`NotFound` (exit 1) if there is none."""
    tenant = await get_tenant_by_name(session, name)
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}", code="tenant_not_found")
    return tenant.id
