"""Run Alembic programmatically; the migrations ship inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from outpost import migrations
from outpost.control_plane.db.engine import sync_url

__all__ = ["alembic_config", "upgrade_to_head"]


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    # '%' in URLs (encoded passwords) must be escaped for configparser.
    cfg.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade_to_head(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        path = sync_url(database_url).split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")
