"""Audit events carry their tenant's own sequence number (issue 20).

Why: in a tenant-scoped export every other tenant's event is a redacted
line, so the control plane could show one of the tenant's own events as
redacted (or drop it and renumber nothing but the global seq) and the tenant
could not tell. ``tenant_seq`` numbers each tenant's events 1, 2, 3, ... and
is hashed into the event, so a gap is visible to the tenant alone.
``audit_tenant_heads`` holds each tenant's counter; it is written only under
the ``audit_head`` row lock, like the global seq, and survives pruning.
Existing events keep ``tenant_seq`` NULL (their hashes must not change);
numbering starts at 1 with each tenant's first event after this migration.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 10:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant_seq', sa.BigInteger(), nullable=True))
        batch_op.create_unique_constraint('uq_audit_events_tenant_seq', ['tenant_id', 'tenant_seq'])
    op.create_table('audit_tenant_heads',
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id')
    )


def downgrade() -> None:
    op.drop_table('audit_tenant_heads')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_constraint('uq_audit_events_tenant_seq', type_='unique')
        batch_op.drop_column('tenant_seq')
