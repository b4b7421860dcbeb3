"""serving sequence: the one-row counter that numbers serving states

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 19:10:00
"""
import uuid

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table('serving_sequence',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('epoch', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(table, [{'id': 1, 'seq': 0, 'epoch': uuid.uuid4().hex}])


def downgrade() -> None:
    op.drop_table('serving_sequence')
