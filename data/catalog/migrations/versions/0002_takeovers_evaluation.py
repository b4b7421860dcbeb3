"""takeovers per episode and the evaluation flag

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

- `episodes.num_takeovers`: contiguous stretches of correction ticks (data/effort.py), counted at
  registration; rows registered before this revision are counted again when next registered
  (`recap data fsck` / reconcile) and read 0 until then.
- `episodes.evaluation`: the episode was recorded to evaluate a policy (held out): never selected
  for training.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("num_takeovers", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("evaluation", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_episodes_evaluation", "episodes", ["evaluation"])


def downgrade() -> None:
    op.drop_index("ix_episodes_evaluation", "episodes")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("evaluation")
        batch.drop_column("num_takeovers")
