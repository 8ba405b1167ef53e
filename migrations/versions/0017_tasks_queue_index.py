"""ready tasks of named worker pools by index: tasks_queue_waiting_idx on (queue)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 03:25:00

* Every few seconds a controller says why the ready tasks of a pool no live worker consumes
  wait (``kiln.store.dispatch.note_unserved_queues_txn``). Without an index that update read
  every ready task by sequential scan (two scans of 1,000,000 rows in 20 s in
  ``bench/scale.py``); this partial index is empty while every task runs in the default pool.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

WAITING = "status IN ('ready', 'retrying') AND queue IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "tasks_queue_waiting_idx",
        "tasks",
        ["queue"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )


def downgrade() -> None:
    op.drop_index("tasks_queue_waiting_idx", table_name="tasks")
