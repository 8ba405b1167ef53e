"""the longest-waiting ready tasks by index: tasks_age_idx on (ready_at, id)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 02:00:00

* The controller ranks, beside the best ready tasks by priority, the oldest ones
  (``kiln.store.dispatch.dispatch_candidates_txn``): an aging policy could otherwise never see
  an old low-priority task behind a larger backlog of higher-priority ones. This partial
  index keeps that second read flat however many tasks are queued, as ``tasks_dispatch_idx``
  does for the first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

READY = "status IN ('ready', 'retrying')"


def upgrade() -> None:
    op.create_index(
        "tasks_age_idx",
        "tasks",
        ["ready_at", "id"],
        postgresql_where=sa.text(READY),
        sqlite_where=sa.text(READY),
    )


def downgrade() -> None:
    op.drop_index("tasks_age_idx", table_name="tasks")
