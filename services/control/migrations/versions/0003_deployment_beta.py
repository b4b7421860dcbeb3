"""deployment beta: an optional per-deployment override of the artifact's guidance strength

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 22:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('beta', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('beta')
