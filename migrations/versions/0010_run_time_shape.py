"""run-time shape: mapped tasks, child workflows and the waiting state

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:10:00

* ``tasks.status`` may be ``waiting``: a map task while its items run, or a task whose handler
  waits for child runs (no worker holds it).
* ``tasks.map_over`` (on a map task: the reference its items come from), ``map_index`` and
  ``mapped_from`` (on each item: its place and its map task; unique together, so expanding a
  map twice cannot duplicate an item), ``resumes`` (claims that resumed the task after it
  waited; an attempt that waits and resumes is still one try).
* ``workflows.parent_task_id``/``parent_workflow_id``/``parent_attempt``/``child_key`` link a
  child run to the task that started it (unique per parent task, try and key: starting it
  again returns the same run) and ``awaited`` says the parent waits for it.

SQLite cannot alter a CHECK constraint; its documented procedure for a change that leaves the
stored rows valid is to edit the table's SQL in ``sqlite_schema`` under ``writable_schema``
(https://www.sqlite.org/lang_altertable.html#otheralter), which is what happens here rather
than copying the tasks table (its triggers and the views over it would have to be rebuilt).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD_STATES = (
    "'pending', 'ready', 'queued', 'running', 'retrying', 'succeeded', 'failed', "
    "'cancelled', 'upstream_failed'"
)
NEW_STATES = OLD_STATES + ", 'waiting'"


def _task_states(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint(op.f("tasks_status_check"), "tasks", type_="check")
        op.create_check_constraint(op.f("tasks_status_check"), "tasks", f"status IN ({new})")
        return
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'tasks'",
        (f"status IN ({old})", f"status IN ({new})"),
    )
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    _task_states(OLD_STATES, NEW_STATES)
    op.add_column(
        "tasks",
        sa.Column(
            "map_over",
            sa.Text,
            comment="map task: the {{Task.result...}} list it runs once per item of",
        ),
    )
    op.add_column(
        "tasks", sa.Column("map_index", sa.Integer, comment="mapped item: its place in the list")
    )
    op.add_column(
        "tasks",
        sa.Column("mapped_from", sa.BigInteger, comment="mapped item: its map task (tasks.id)"),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "resumes",
            sa.Integer,
            nullable=False,
            server_default="0",
            comment="claims that resumed the task after it waited for child runs; "
            "attempts - resumes is its try",
        ),
    )
    op.create_index(
        op.f("tasks_mapped_from_map_index_idx"),
        "tasks",
        ["mapped_from", "map_index"],
        unique=True,
    )
    # The controller looks for ready map tasks on every pass: a partial index keeps that flat
    # however many other tasks are ready.
    op.create_index(
        "tasks_map_ready_idx",
        "tasks",
        ["id"],
        postgresql_where=sa.text("status = 'ready' AND map_over IS NOT NULL"),
        sqlite_where=sa.text("status = 'ready' AND map_over IS NOT NULL"),
    )
    op.add_column(
        "workflows",
        sa.Column("parent_task_id", sa.BigInteger, comment="child run: the task that started it"),
    )
    op.add_column(
        "workflows",
        sa.Column("parent_workflow_id", sa.BigInteger, comment="child run: that task's run"),
    )
    op.add_column(
        "workflows",
        sa.Column("parent_attempt", sa.Integer, comment="child run: the parent task's try"),
    )
    op.add_column(
        "workflows",
        sa.Column("child_key", sa.Text, comment="child run: the key its parent started it with"),
    )
    op.add_column(
        "workflows",
        sa.Column(
            "awaited",
            sa.Boolean,
            nullable=False,
            server_default=sa.false(),
            comment="child run: its parent task waits for it to end",
        ),
    )
    op.create_index(
        op.f("workflows_parent_task_id_parent_attempt_child_key_idx"),
        "workflows",
        ["parent_task_id", "parent_attempt", "child_key"],
        unique=True,
    )
    op.create_index(op.f("workflows_parent_workflow_id_idx"), "workflows", ["parent_workflow_id"])


def downgrade() -> None:
    op.drop_index(op.f("workflows_parent_workflow_id_idx"), table_name="workflows")
    op.drop_index(
        op.f("workflows_parent_task_id_parent_attempt_child_key_idx"), table_name="workflows"
    )
    for column in (
        "awaited",
        "child_key",
        "parent_attempt",
        "parent_workflow_id",
        "parent_task_id",
    ):
        op.drop_column("workflows", column)
    op.drop_index("tasks_map_ready_idx", table_name="tasks")
    op.drop_index(op.f("tasks_mapped_from_map_index_idx"), table_name="tasks")
    for column in ("resumes", "mapped_from", "map_index", "map_over"):
        op.drop_column("tasks", column)
    op.execute(
        "UPDATE tasks SET status = 'cancelled', error = 'waiting when Kiln was downgraded' "
        "WHERE status = 'waiting'"
    )
    _task_states(NEW_STATES, OLD_STATES)
