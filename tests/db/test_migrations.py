"""The ORM and the migrations never drift, on both supported databases."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, inspect

from outpost.control_plane.db.engine import sync_url
from outpost.control_plane.db.migrate import alembic_config
from outpost.control_plane.db.models import Base

BACKENDS = pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))
    assert len(script.get_heads()) == 1


@BACKENDS
def test_upgrade_downgrade_upgrade(fresh_database_url: str) -> None:
    cfg = alembic_config(fresh_database_url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    engine = create_engine(sync_url(fresh_database_url))
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    command.upgrade(cfg, "head")
    engine = create_engine(sync_url(fresh_database_url))
    try:
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@BACKENDS
def test_orm_matches_migrations(fresh_database_url: str) -> None:
    cfg = alembic_config(fresh_database_url)
    command.upgrade(cfg, "head")
    try:
        command.check(cfg)
    except CommandError as exc:  # pragma: no cover - the message is the diagnosis
        pytest.fail(f"ORM and migrations differ; write a migration:\n{exc}")
