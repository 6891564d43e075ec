"""Initial schema: tenants, API keys, enrollment tokens, runners, served models, request records.

Why: the walking skeleton needs identities (tenant, key, runner) and a record of
every request (usage and timing, never prompt or completion text).

Revision ID: 0001
Revises: -
Create Date: 2026-11-27 21:04:14.378510
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=128), nullable=False),
    sa.Column('scopes', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prefix')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('enrollment_tokens',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('runner_name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('prefix')
    )
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrollment_tokens_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('request_records',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('api_key_id', sa.String(length=40), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('runner_id', sa.String(length=40), nullable=True),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('e2e', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=False),
    sa.Column('error_type', sa.String(length=64), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('queue_ms', sa.Float(), nullable=True),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('engine_share_s', sa.Float(), nullable=True),
    sa.Column('cost_usd', sa.Float(), nullable=True),
    sa.Column('bytes_out', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('request_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_records_api_key_id'), ['api_key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_request_records_runner_id'), ['runner_id'], unique=False)
        batch_op.create_index('ix_request_records_tenant_created', ['tenant_id', 'created_at'], unique=False)

    op.create_table('runners',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('identity_public_key', sa.String(length=128), nullable=False),
    sa.Column('hpke_public_key', sa.String(length=2048), nullable=True),
    sa.Column('hpke_key_signature', sa.String(length=256), nullable=True),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('hardware', sa.JSON(), nullable=False),
    sa.Column('cost', sa.JSON(), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'name')
    )
    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runners_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('served_models',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('runner_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('engine', sa.String(length=64), nullable=False),
    sa.Column('context_length', sa.Integer(), nullable=True),
    sa.Column('quantization', sa.String(length=64), nullable=True),
    sa.Column('aliases', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['runner_id'], ['runners.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('runner_id', 'name')
    )
    with op.batch_alter_table('served_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_served_models_name'), ['name'], unique=False)
        batch_op.create_index(batch_op.f('ix_served_models_runner_id'), ['runner_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('served_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_served_models_runner_id'))
        batch_op.drop_index(batch_op.f('ix_served_models_name'))

    op.drop_table('served_models')
    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runners_tenant_id'))

    op.drop_table('runners')
    with op.batch_alter_table('request_records', schema=None) as batch_op:
        batch_op.drop_index('ix_request_records_tenant_created')
        batch_op.drop_index(batch_op.f('ix_request_records_runner_id'))
        batch_op.drop_index(batch_op.f('ix_request_records_api_key_id'))

    op.drop_table('request_records')
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_enrollment_tokens_tenant_id'))

    op.drop_table('enrollment_tokens')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant_id'))

    op.drop_table('api_keys')
    op.drop_table('tenants')
