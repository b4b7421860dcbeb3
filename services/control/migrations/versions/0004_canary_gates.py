"""canary gates: a canary deployment that is widened or rolled back by a stated rule

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'canary_gates',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('deployment_id', sa.Integer(), sa.ForeignKey('deployments.id'), nullable=False, unique=True),
        sa.Column('version_id', sa.String(128), nullable=False),
        sa.Column('robot_id', sa.String(128), nullable=False),
        sa.Column('baseline_version', sa.String(128), nullable=True),
        sa.Column('min_episodes', sa.Integer(), nullable=False),
        sa.Column('threshold', sa.Float(), nullable=False),
        sa.Column('started_at_ns', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('figures', sa.JSON(), nullable=False),
        sa.Column('decided_at_ns', sa.BigInteger(), nullable=True),
        sa.Column('decision_deployment_id', sa.Integer(), sa.ForeignKey('deployments.id'), nullable=True),
        sa.Column('created_by', sa.String(128), nullable=False),
    )
    op.create_index('ix_canary_gates_status', 'canary_gates', ['status'])


def downgrade() -> None:
    op.drop_index('ix_canary_gates_status', 'canary_gates')
    op.drop_table('canary_gates')
