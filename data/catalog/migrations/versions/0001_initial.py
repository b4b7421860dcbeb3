"""initial catalog: robots, tasks, episodes, policy versions per episode, outcome label history

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "robots",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("first_seen_ns", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("instruction", sa.Text(), nullable=False),
    )
    op.create_table(
        "episodes",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("robot_id", sa.String(128), sa.ForeignKey("robots.id"), nullable=False),
        sa.Column("task_id", sa.String(128), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_labeller", sa.String(128), nullable=True),
        sa.Column("outcome_labelled_at_ns", sa.BigInteger(), nullable=True),
        sa.Column("num_ticks", sa.Integer(), nullable=False),
        sa.Column("num_policy_ticks", sa.Integer(), nullable=False),
        sa.Column("num_correction_ticks", sa.Integer(), nullable=False),
        sa.Column("num_demonstration_ticks", sa.Integer(), nullable=False),
        sa.Column("num_hold_ticks", sa.Integer(), nullable=False),
        sa.Column("fps", sa.Float(), nullable=False),
        sa.Column("start_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("registered_at_ns", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_episodes_robot_id", "episodes", ["robot_id"])
    op.create_index("ix_episodes_task_id", "episodes", ["task_id"])
    op.create_index("ix_episodes_outcome", "episodes", ["outcome"])
    op.create_index("ix_episodes_start_time_ns", "episodes", ["start_time_ns"])
    op.create_table(
        "episode_policy_versions",
        sa.Column("episode_id", sa.String(160), sa.ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("policy_version", sa.String(128), primary_key=True),
    )
    op.create_index("ix_episode_policy_versions_policy_version", "episode_policy_versions", ["policy_version"])
    op.create_table(
        "outcome_labels",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("episode_id", sa.String(160), sa.ForeignKey("episodes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("labeller", sa.String(128), nullable=False),
        sa.Column("labelled_at_ns", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_outcome_labels_episode_id", "outcome_labels", ["episode_id"])
    op.create_index("ix_outcome_labels_unique", "outcome_labels", ["episode_id", "labelled_at_ns", "labeller"], unique=True)


def downgrade() -> None:
    op.drop_table("outcome_labels")
    op.drop_table("episode_policy_versions")
    op.drop_table("episodes")
    op.drop_table("tasks")
    op.drop_table("robots")
