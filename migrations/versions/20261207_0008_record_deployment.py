"""Request records say which deployment answered (issue 22).

Why: two deployments of one public name may share a runner (A/B on one machine: each replica
answers there to a name of its own), so the runner no longer tells them apart in the records.
The comparison (control_plane/deployments/compare.py) attributes a record by this column and
falls back to the runner for records written before it (NULL).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 17:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployment_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_records", schema=None) as batch_op:
        batch_op.drop_column("deployment_id")
