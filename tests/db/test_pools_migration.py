"""Migration 0004 on data: every tenant gets a default pool holding its runners; reported labels
stop counting."""

from __future__ import annotations

import json

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from outpost.control_plane.db.engine import sync_url
from outpost.control_plane.db.migrate import alembic_config


@pytest.mark.parametrize("fresh_database_url", ["sqlite", "postgres"], indirect=True)
def test_existing_runners_join_their_tenants_default_pool_and_their_labels_become_reported(
    fresh_database_url: str,
) -> None:
    cfg = alembic_config(fresh_database_url)
    command.upgrade(cfg, "0003")
    engine = create_engine(sync_url(fresh_database_url))
    try:
        with engine.begin() as conn:
            for t in ("ten_a", "ten_b"):
                conn.execute(
                    text(
                        "INSERT INTO tenants (id, name, weight, routing_policy, residency, "
                        "created_at) VALUES (:id, :id, 1.0, 'balanced', '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"id": t},
                )
            conn.execute(
                text(
                    "INSERT INTO runners (id, tenant_id, name, identity_public_key, labels, "
                    "hardware, cost, capacity, created_at) VALUES ('run_a', 'ten_a', 'a', 'k', "
                    ":labels, '{}', :cost, 1, CURRENT_TIMESTAMP)"
                ),
                {
                    "labels": json.dumps({"site": "claimed"}),
                    "cost": json.dumps({"usd_per_hour": 2}),
                },
            )
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            pools = {r.tenant_id: (r.id, r.name) for r in conn.execute(text("SELECT * FROM pools"))}
            runner = conn.execute(text("SELECT * FROM runners")).one()
    finally:
        engine.dispose()
    assert set(pools) == {"ten_a", "ten_b"} and {name for _, name in pools.values()} == {"default"}
    assert runner.pool_id == pools["ten_a"][0]

    def as_dict(v: object) -> object:
        return v if isinstance(v, dict) else json.loads(str(v))

    assert as_dict(runner.reported_labels) == {"site": "claimed"} and as_dict(runner.labels) == {}
    assert as_dict(runner.cost) == {
        "usd_per_hour": 2
    }  # the price it had is kept: no hello changes it now
