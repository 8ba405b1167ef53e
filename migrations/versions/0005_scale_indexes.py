"""partial indexes that keep the controller's passes flat at a million queued tasks

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 09:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

WAITING = "status IN ('ready', 'retrying') AND model_type IS NOT NULL"
UNPREDICTED = (
    "status IN ('pending', 'ready', 'retrying') AND model_type IS NOT NULL AND predicted IS NULL"
)
FINISHED = "finished_at IS NOT NULL"


def upgrade() -> None:
    for name, column, where in (
        ("tasks_model_type_waiting_idx", "model_type", WAITING),
        ("tasks_unpredicted_idx", "id", UNPREDICTED),
        ("tasks_finished_at_idx", "finished_at", FINISHED),
    ):
        op.create_index(
            name,
            "tasks",
            [column],
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade() -> None:
    for name in ("tasks_finished_at_idx", "tasks_unpredicted_idx", "tasks_model_type_waiting_idx"):
        op.drop_index(name, table_name="tasks")
