"""tasks name the worker pool that runs them and may carry their own retry policy

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 12:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column(
            "queue",
            sa.Text,
            comment="worker pool that runs the task (kiln worker --queues); NULL: the default pool",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "retry",
            Json,
            comment="the task's own retry policy (backoff_s, max_backoff_s, jitter, on); "
            "NULL: the deployment's defaults",
        ),
    )


def downgrade() -> None:
    op.drop_column("tasks", "retry")
    op.drop_column("tasks", "queue")
