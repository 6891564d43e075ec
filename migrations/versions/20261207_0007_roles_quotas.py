"""Roles that fit an organisation, token quotas and per-key model allow-lists (issue 26).

Why: console users had two roles, ``admin`` and ``viewer``; there are now six
(``control_plane.permissions``). Every existing ``admin`` could do everything,
which is what ``owner`` now means, so they become owners and lose nothing;
viewers stay viewers. API keys keep their scopes: the legacy ``admin`` scope
reads as the ``admin`` role. Keys get an allow-list of model names and glob
patterns (NULL: every model the tenant can reach) and, with tenants, quotas
of tokens per minute and per day (input + output) and of requests in flight.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_models', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tokens_per_minute', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('tokens_per_day', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('max_concurrent', sa.Integer(), nullable=True))
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tokens_per_minute', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('tokens_per_day', sa.BigInteger(), nullable=True))
    op.execute("UPDATE users SET role = 'owner' WHERE role = 'admin'")


def downgrade() -> None:
    # The two old roles hold what they can: anyone who could write becomes admin, an
    # auditor the nearest read-only role.
    op.execute(
        "UPDATE users SET role = 'admin' WHERE role IN ('owner', 'admin', 'operator', 'developer')"
    )
    op.execute("UPDATE users SET role = 'viewer' WHERE role = 'auditor'")
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('tokens_per_day')
        batch_op.drop_column('tokens_per_minute')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('max_concurrent')
        batch_op.drop_column('tokens_per_day')
        batch_op.drop_column('tokens_per_minute')
        batch_op.drop_column('allowed_models')
