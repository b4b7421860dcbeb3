"""episode annotations: stretches of an episode a reviewer marked (a bad correction, with its reason)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "episode_annotations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("episode_id", sa.String(160), sa.ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("start_tick", sa.Integer(), nullable=False),
        sa.Column("end_tick", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_episode_annotations_episode_id", "episode_annotations", ["episode_id"])


def downgrade() -> None:
    op.drop_table("episode_annotations")
