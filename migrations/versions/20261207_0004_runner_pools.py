"""Runner pools and grants; owner-set runner labels and cost (issue 19).

Why: a tenant's requests must reach only runners it trusts. Every runner now
belongs to one pool of its own tenant; a tenant routes to its own pools and
to pools explicitly granted to it (``pool_grants``, revocable). Each existing
tenant gets a ``default`` pool holding all its runners, so nothing is shared
after this migration that the owner did not grant.

Residency labels were taken from each runner's hello, i.e. claimed by the
runner. They move to ``reported_labels`` (shown, never trusted) and the
owner-set ``labels`` start empty: a tenant with residency rules must set its
runners' labels again (``control-plane runners set``), failing closed until
then. Enrollment tokens can name the pool and labels a runner joins with.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 10:30:00.000000
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pools',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'name')
    )
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pools_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('pool_grants',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('pool_id', sa.String(length=40), nullable=False),
    sa.Column('grantee_tenant_id', sa.String(length=40), nullable=True),
    sa.Column('granted_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['grantee_tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('pool_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pool_grants_grantee_tenant_id'), ['grantee_tenant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pool_grants_pool_id'), ['pool_id'], unique=False)

    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refuse_shared_pools', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('platform_operator', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('labels', sa.JSON(), nullable=False, server_default='{}'))
        batch_op.create_foreign_key('fk_enrollment_tokens_pool_id_pools', 'pools', ['pool_id'], ['id'],
                                    ondelete='SET NULL')
    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('reported_labels', sa.JSON(), nullable=False, server_default='{}'))

    # One default pool per existing tenant, holding all its runners.
    conn = op.get_bind()
    now = sa.func.now() if conn.dialect.name == 'postgresql' else sa.func.current_timestamp()
    tenants = conn.execute(sa.text('SELECT id FROM tenants')).scalars().all()
    pools = sa.table('pools', sa.column('id', sa.String), sa.column('tenant_id', sa.String),
                     sa.column('name', sa.String), sa.column('created_at', sa.DateTime(timezone=True)))
    runners = sa.table('runners', sa.column('tenant_id', sa.String), sa.column('pool_id', sa.String),
                       sa.column('labels', sa.JSON), sa.column('reported_labels', sa.JSON))
    for tenant_id in tenants:
        pool_id = f'pool_{uuid.uuid4().hex[:20]}'
        conn.execute(pools.insert().values(id=pool_id, tenant_id=tenant_id, name='default', created_at=now))
        conn.execute(runners.update().where(runners.c.tenant_id == tenant_id).values(pool_id=pool_id))
    # The hello's labels were the runner's claim: kept as reported, not trusted for residency.
    conn.execute(runners.update().values(reported_labels=runners.c.labels))
    conn.execute(runners.update().values(labels={}))

    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.alter_column('pool_id', existing_type=sa.String(length=40), nullable=False)
        batch_op.create_index(batch_op.f('ix_runners_pool_id'), ['pool_id'], unique=False)
        batch_op.create_foreign_key('fk_runners_pool_id_pools', 'pools', ['pool_id'], ['id'])
    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.alter_column('reported_labels', server_default=None)
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.alter_column('labels', server_default=None)
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.alter_column('refuse_shared_pools', server_default=None)
        batch_op.alter_column('platform_operator', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('runners', schema=None) as batch_op:
        batch_op.drop_constraint('fk_runners_pool_id_pools', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_runners_pool_id'))
        batch_op.drop_column('reported_labels')
        batch_op.drop_column('pool_id')
    with op.batch_alter_table('enrollment_tokens', schema=None) as batch_op:
        batch_op.drop_constraint('fk_enrollment_tokens_pool_id_pools', type_='foreignkey')
        batch_op.drop_column('labels')
        batch_op.drop_column('pool_id')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('platform_operator')
        batch_op.drop_column('refuse_shared_pools')
    with op.batch_alter_table('pool_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pool_grants_pool_id'))
        batch_op.drop_index(batch_op.f('ix_pool_grants_grantee_tenant_id'))
    op.drop_table('pool_grants')
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pools_tenant_id'))
    op.drop_table('pools')
