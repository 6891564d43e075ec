"""Audit log: hash-chained events, the chain head, signed checkpoints, audit public keys.

Why: the tamper-evident audit log (docs/audit.md). ``audit_head`` is one row
that every append locks, so concurrent appends and several control-plane
processes on one database produce a single chain; it is created here with
the genesis values (seq 0, hash of 32 zero bytes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 22:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.String(length=32), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=True),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_tenant_seq', ['tenant_id', 'seq'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_type'), ['type'], unique=False)

    head = op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_seq', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_ts', sa.String(length=32), nullable=True),
    sa.Column('anchor_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(head, [{'id': 1, 'seq': 0, 'hash': '0' * 64, 'checkpoint_seq': 0, 'checkpoint_ts': None,
                           'anchor_seq': 0}])

    op.create_table('audit_checkpoints',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.String(length=32), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('audit_keys',
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('prev_key_id', sa.String(length=64), nullable=True),
    sa.Column('prev_public_key', sa.String(length=64), nullable=True),
    sa.Column('rotated_at', sa.String(length=32), nullable=True),
    sa.Column('prev_signature', sa.String(length=128), nullable=True),
    sa.Column('signature', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('key_id')
    )


def downgrade() -> None:
    op.drop_table('audit_keys')
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_head')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_type'))
        batch_op.drop_index('ix_audit_events_tenant_seq')

    op.drop_table('audit_events')
