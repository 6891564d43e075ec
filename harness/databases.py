"""Fresh databases for one test or one benchmark run: SQLite in a folder, PostgreSQL by name.

PostgreSQL on 127.0.0.1:5432 with trust auth and Redis on 127.0.0.1:6379, as scripts/test
starts them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

__all__ = ["PG_ADMIN", "REDIS_URL", "database", "drop_keys", "pg_create", "pg_drop"]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pg_create(name: str) -> str:
    """Create database ``name``; its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def pg_drop(name: str) -> None:
    """Drop database ``name``, closing its connections."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database(backend: str, tmp: Path) -> Iterator[str]:
    """The URL of an empty database of ``backend`` (sqlite or postgres), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'outpost.db'}"
        return
    name = f"outpost_test_{secrets.token_hex(4)}"
    url = pg_create(name)
    try:
        yield url
    finally:
        pg_drop(name)


def drop_keys(prefix: str) -> None:
    """Delete the Redis keys under ``prefix:`` (one cluster's registry and bus)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
