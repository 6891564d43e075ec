"""Multi-row INSERTs on a plain ``sqlite3`` connection, stored exactly as SQLAlchemy stores them.

For the request-record writer's hot path (services/record_sqlite.py), where
SQLAlchemy's per-statement machinery cost more CPU than SQLite's own work.
The values go through each column's own bind processor for the SQLite
dialect (datetimes as SQLAlchemy's text format, JSON serialised, booleans as
integers), so rows read back through the ORM are the same as if it had
written them; Python-side column defaults are applied as the ORM applies them.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

__all__ = ["insert_many"]

_DIALECT = sqlite.dialect()


@dataclass(frozen=True)
class _Insert:
    sql: str
    columns: tuple[tuple[str, Callable[[], Any] | None, Callable[[Any], Any] | None], ...]


@functools.cache  # one per table
def _insert(table: Table) -> _Insert:
    columns = []
    for column in table.columns:
        default = column.default
        make: Callable[[], Any] | None = None
        if isinstance(default, CallableColumnDefault):
            # SQLAlchemy wraps the callable to take an execution context; the models' defaults
            # (ids, clocks) never read it, so none is made for them.
            make = functools.partial(default.arg, None)  # type: ignore[arg-type]
        elif isinstance(default, ScalarElementColumnDefault):
            make = functools.partial(lambda value: value, default.arg)
        columns.append(
            (column.key, make, column.type.dialect_impl(_DIALECT).bind_processor(_DIALECT))
        )
    names = ", ".join(f'"{key}"' for key, _, _ in columns)
    marks = ", ".join("?" for _ in columns)
    return _Insert(f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})', tuple(columns))


def insert_many(db: sqlite3.Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (column key -> Python value; ``None`` or missing takes the column's
    default)."""
    plan = _insert(table)
    params = []
    for row in rows:
        values = []
        for key, make, process in plan.columns:
            value = row.get(key)
            if value is None and make is not None:
                value = make()
            values.append(process(value) if process is not None and value is not None else value)
        params.append(values)
    db.executemany(plan.sql, params)
