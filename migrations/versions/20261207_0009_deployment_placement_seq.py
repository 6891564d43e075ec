"""A counter that makes placing a deployment's replicas a compare-and-swap (issue 22).

Why: two reconcile passes (two control-plane replicas, or two passes of one) could both read a
deployment short of replicas and both place one, so it ran more replicas than asked for. A pass
now bumps ``placement_seq`` from the value it read before it adds replica rows; the pass whose
update matches no row (another placed meanwhile) places nothing and looks again next time.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 17:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("placement_seq", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("placement_seq")
