"""Operator writes, one module per resource: validate, call the store, append the audit event.

The API (``control_plane/api``), the console (``control_plane/console/pages``)
and the CLI call these and nothing below them for a write. Every action takes
the caller's :class:`~sqlalchemy.ext.asyncio.AsyncSession` and never commits:
the door owns the transaction, so the write and its audit event stand or fall
together, and a door may compose several actions in one commit (the console
creates a key and its budget at once). Refusals are
:mod:`control_plane.domain_errors`, mapped to a status, a flash message or an
exit code by the door. See docs/architecture.md.
"""
