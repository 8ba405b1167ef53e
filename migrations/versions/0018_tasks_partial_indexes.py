"""tasks' instance and map-item indexes only over the tasks that have them

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 05:45:00

* ``tasks_instance_id_idx`` (instance_id) and the unique ``tasks_mapped_from_map_index_idx``
  (mapped_from, map_index) took an entry for every task, NULLs included, and a status change
  is not a HOT update (status is indexed), so every lease, claim and finish of every task
  wrote one more entry into each. Partial (``IS NOT NULL``), they hold only the tasks
  TaskInstances run and map items. Every query on them compares the column with ``=`` or
  ``IN``, which implies ``IS NOT NULL``; uniqueness is unchanged (NULLs never conflicted).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("tasks_instance_id_idx", table_name="tasks")
    op.create_index(
        "tasks_instance_id_idx",
        "tasks",
        ["instance_id"],
        postgresql_where=sa.text("instance_id IS NOT NULL"),
        sqlite_where=sa.text("instance_id IS NOT NULL"),
    )
    op.drop_index("tasks_mapped_from_map_index_idx", table_name="tasks")
    op.create_index(
        "tasks_mapped_from_map_index_idx",
        "tasks",
        ["mapped_from", "map_index"],
        unique=True,
        postgresql_where=sa.text("mapped_from IS NOT NULL"),
        sqlite_where=sa.text("mapped_from IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("tasks_mapped_from_map_index_idx", table_name="tasks")
    op.create_index(
        "tasks_mapped_from_map_index_idx", "tasks", ["mapped_from", "map_index"], unique=True
    )
    op.drop_index("tasks_instance_id_idx", table_name="tasks")
    op.create_index("tasks_instance_id_idx", "tasks", ["instance_id"])
