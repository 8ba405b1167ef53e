"""cron schedules, their fires, retention and reruns

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:30:00

* ``schedules``: a cron expression in an IANA time zone, the definition each fire submits,
  the overlap and catch-up policies, a per-schedule retention, and ``next_fire_at``, the
  cursor controllers advance.
* ``schedule_fires``: one row per (schedule, fire time) handled. Its primary key is what makes
  a fire time produce exactly one run with any number of controllers.
* ``workflows.schedule_id`` (the schedule that started the run), ``workflows.rerun_of`` (the
  run a rerun reuses results from); for retention, indexes on ``workflows.finished_at``,
  ``operations.workflow_id`` and ``schedule_fires.workflow_id``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", Id, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column(
            "cron",
            sa.Text,
            nullable=False,
            comment="5 fields (minute hour day month weekday), or 6 with seconds first",
        ),
        sa.Column(
            "timezone",
            sa.Text,
            nullable=False,
            server_default="UTC",
            comment="IANA zone the cron fields are read in",
        ),
        sa.Column("definition", Json, nullable=False, comment="the workflow each fire submits"),
        sa.Column("overlap", sa.Text, nullable=False, server_default="skip"),
        sa.Column("catch_up", sa.Text, nullable=False, server_default="none"),
        sa.Column(
            "grace_s",
            sa.Float,
            nullable=False,
            server_default="5",
            comment="a fire time later than this when a controller first sees it was missed",
        ),
        sa.Column(
            "retention_days",
            sa.Float,
            comment="finished runs of this schedule are pruned after this; NULL: "
            "KILN_RETENTION_DAYS",
        ),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "next_fire_at",
            Timestamp,
            nullable=False,
            comment="the next fire time not yet handled; controllers fire it once due",
        ),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "overlap IN ('skip', 'allow', 'cancel_previous')", name=op.f("schedules_overlap_check")
        ),
        sa.CheckConstraint(
            "catch_up IN ('none', 'latest', 'all')", name=op.f("schedules_catch_up_check")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("schedules_pkey")),
        sa.UniqueConstraint("name", name=op.f("schedules_name_key")),
        comment="Cron schedules: each fire time submits the schedule's workflow once.",
    )
    op.create_index(
        op.f("schedules_paused_next_fire_at_idx"), "schedules", ["paused", "next_fire_at"]
    )
    op.create_table(
        "schedule_fires",
        sa.Column("schedule_id", sa.BigInteger, nullable=False),
        sa.Column("fire_time", Timestamp, nullable=False, comment="the cron time, UTC"),
        sa.Column("fired_at", Timestamp, nullable=False, comment="when a controller handled it"),
        sa.Column(
            "outcome",
            sa.Text,
            nullable=False,
            comment="started, or skipped (overlap=skip and the previous run unfinished)",
        ),
        sa.Column("workflow_id", sa.BigInteger, comment="the run started (kept after pruning)"),
        sa.CheckConstraint(
            "outcome IN ('started', 'skipped')", name=op.f("schedule_fires_outcome_check")
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["schedules.id"],
            name=op.f("schedule_fires_schedule_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("schedule_id", "fire_time", name=op.f("schedule_fires_pkey")),
        comment="One row per (schedule, fire time) handled: the key that fires each once.",
    )
    op.add_column(
        "workflows",
        sa.Column("schedule_id", sa.BigInteger, comment="the schedule that started the run"),
    )
    op.add_column(
        "workflows",
        sa.Column(
            "rerun_of",
            sa.BigInteger,
            comment="rerun: the run whose succeeded tasks' results this one reused",
        ),
    )
    op.create_index(
        op.f("workflows_schedule_id_status_idx"), "workflows", ["schedule_id", "status"]
    )
    op.create_index(op.f("workflows_finished_at_idx"), "workflows", ["finished_at"])
    # Pruning deletes a run's operations and fires by workflow_id, and deleting a run checks
    # the foreign key from operations: without these, each is a scan of the whole table.
    op.create_index(op.f("operations_workflow_id_idx"), "operations", ["workflow_id"])
    op.create_index(op.f("schedule_fires_workflow_id_idx"), "schedule_fires", ["workflow_id"])


def downgrade() -> None:
    op.drop_index(op.f("schedule_fires_workflow_id_idx"), table_name="schedule_fires")
    op.drop_index(op.f("operations_workflow_id_idx"), table_name="operations")
    op.drop_index(op.f("workflows_finished_at_idx"), table_name="workflows")
    op.drop_index(op.f("workflows_schedule_id_status_idx"), table_name="workflows")
    op.drop_column("workflows", "rerun_of")
    op.drop_column("workflows", "schedule_id")
    op.drop_table("schedule_fires")
    op.drop_index(op.f("schedules_paused_next_fire_at_idx"), table_name="schedules")
    op.drop_table("schedules")
