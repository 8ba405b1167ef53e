"""durable sleep and signals: a waiting task's wake time and saved state, and signals

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 14:40:00

* ``tasks.wake_at``: a ``waiting`` task becomes ready at this time (a sleep's end, or the
  deadline of a wait for a signal); a partial index keeps the controller's look for due tasks
  flat. ``tasks.state``: what its handler saved for its next run (``sleep_until(t, state)``).
  ``tasks.waiting_signal``: the signal name a waiting task waits for.
* ``signals``: signals sent to a run (``POST /workflows/<id>/signals/<name>``), kept until a
  task of the run takes them (``taken_by``); unique per run, name and key, so a signal sent
  twice with one key is one signal.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column(
            "wake_at",
            Timestamp,
            comment="waiting: ready again at this time (a sleep's end, a signal's deadline)",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column("state", Json, comment="what the handler saved for its next run (sleep_until)"),
    )
    op.add_column(
        "tasks",
        sa.Column("waiting_signal", sa.Text, comment="waiting: the signal it waits for"),
    )
    op.create_index(
        "tasks_wake_at_idx",
        "tasks",
        ["wake_at"],
        postgresql_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL"),
    )
    op.create_table(
        "signals",
        sa.Column("id", Id, nullable=False),
        sa.Column(
            "workflow_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "workflows.id", name=op.f("signals_workflow_id_fkey"), ondelete="CASCADE"
            ),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "key",
            sa.Text(),
            nullable=False,
            comment="the sender's idempotency key (a fresh one when none was given)",
        ),
        sa.Column("payload", Json, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("taken_by", sa.BigInteger(), comment="the task that received it (tasks.id)"),
        sa.Column("taken_at", Timestamp),
        sa.PrimaryKeyConstraint("id", name=op.f("signals_pkey")),
        sa.UniqueConstraint(
            "workflow_id", "name", "key", name=op.f("signals_workflow_id_name_key_key")
        ),
        comment="Signals sent to runs, kept until a task of the run receives them.",
    )


def downgrade() -> None:
    op.drop_table("signals")
    op.drop_index("tasks_wake_at_idx", table_name="tasks")
    for column in ("waiting_signal", "state", "wake_at"):
        op.drop_column("tasks", column)
