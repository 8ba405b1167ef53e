"""Kiln's tables, as SQLAlchemy Core metadata. Alembic migrations create them; this module is
what the code queries with and what ``alembic check`` compares the migrated database against.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "%(table_name)s_%(column_0_N_name)s_idx",
        "uq": "%(table_name)s_%(column_0_N_name)s_key",
        "ck": "%(table_name)s_%(constraint_name)s_check",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "pk": "%(table_name)s_pkey",
    }
)

# BIGINT in PostgreSQL; INTEGER PRIMARY KEY (the rowid) in SQLite, which autoincrements there.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

TASK_STATES = (
    "pending", "ready", "queued", "running", "retrying",
    "succeeded", "failed", "cancelled", "upstream_failed",
)  # fmt: skip
WORKFLOW_STATES = ("pending", "running", "paused", "succeeded", "failed", "cancelled")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column(
        "on_error",
        sa.Text,
        nullable=False,
        server_default="stop",
        comment="stop: a failed task fails the run at once; continue: independent branches go on",
    ),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("definition", Json, nullable=False, comment="the definition as submitted"),
    sa.Column(
        "idempotency_key",
        sa.Text,
        unique=True,
        comment="a retried submission with the same key returns this run instead of a new one",
    ),
    sa.Column("error", sa.Text),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.CheckConstraint(_in("status", WORKFLOW_STATES), name="status"),
    sa.CheckConstraint(_in("on_error", ("stop", "continue")), name="on_error"),
    sa.Index(None, "status", "id"),
    comment="One row per workflow run (a DAG of tasks).",
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column(
        "workflow_id",
        sa.BigInteger,
        sa.ForeignKey("workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column(
        "handler",
        sa.Text,
        comment="registered name or 'package.module:function' the worker calls",
    ),
    sa.Column("model_type", sa.Text, comment="run on a TaskInstance serving this model type"),
    sa.Column(
        "params",
        Json,
        nullable=False,
        comment="parameters as submitted; {{Task.result...}} references resolved at claim time",
    ),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="3"),
    sa.Column("timeout_s", sa.Float),
    sa.Column(
        "attempts",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="claims made so far; incremented when a worker claims (queued -> running)",
    ),
    sa.Column(
        "deps_remaining",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="dependencies not yet succeeded; the task becomes ready when this reaches 0",
    ),
    sa.Column("lease_owner", sa.Text, comment="process id of the worker holding the task"),
    sa.Column(
        "lease_expires_at",
        Timestamp,
        comment="queued: message presumed lost after this; running: worker presumed dead",
    ),
    sa.Column("not_before", Timestamp, comment="retrying: not dispatched before this time"),
    sa.Column(
        "dispatch_count",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="messages sent for this task, re-sends after a lost message included",
    ),
    sa.Column("result", Json),
    sa.Column("error", sa.Text),
    sa.Column("progress", sa.Float, comment="0..1 as last reported by the running handler"),
    sa.Column("progress_message", sa.Text),
    sa.Column("waiting_reason", sa.Text, comment="why a ready task is not being dispatched"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column(
        "ready_at",
        Timestamp,
        comment="when the task last became dispatchable; FIFO order within a priority",
    ),
    sa.Column("queued_at", Timestamp),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.CheckConstraint(_in("status", TASK_STATES), name="status"),
    sa.CheckConstraint("max_attempts >= 1", name="max_attempts"),
    sa.UniqueConstraint("workflow_id", "name"),
    sa.Index(
        "tasks_dispatch_idx",
        sa.desc("priority"),
        "ready_at",
        "id",
        postgresql_where=sa.text("status IN ('ready', 'retrying')"),
        sqlite_where=sa.text("status IN ('ready', 'retrying')"),
    ),
    sa.Index(
        "tasks_lease_idx",
        "lease_expires_at",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
        sqlite_where=sa.text("status IN ('queued', 'running')"),
    ),
    sa.Index(None, "workflow_id", "status"),
    comment="One row per task of a workflow run; the row is the task's truth.",
)

task_dependencies = sa.Table(
    "task_dependencies",
    metadata,
    sa.Column(
        "task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "depends_on_id",
        sa.BigInteger,
        sa.ForeignKey("tasks.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Index(None, "depends_on_id"),
    comment="Edges of the DAG: task_id runs after depends_on_id succeeded.",
)

task_attempts = sa.Table(
    "task_attempts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column(
        "task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker", sa.Text, nullable=False, comment="process id of the worker that ran it"),
    sa.Column(
        "outcome",
        sa.Text,
        nullable=False,
        server_default="running",
        comment="running, succeeded, failed, timed_out, lost (lease expired), stale",
    ),
    sa.Column("error", sa.Text),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    sa.UniqueConstraint("task_id", "attempt"),
    comment="History: one row per claim of a task by a worker.",
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("entity", sa.Text, nullable=False, comment="task, workflow, operation, pipeline"),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("workflow_id", sa.BigInteger),
    sa.Column("from_status", sa.Text),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("at", Timestamp, nullable=False),
    sa.Index(None, "entity", "entity_id"),
    sa.Index(None, "workflow_id"),
    comment="Audit log of every state transition, written by triggers on the state tables.",
)

processes = sa.Table(
    "processes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True, comment="host:pid:random, unique per process"),
    sa.Column("kind", sa.Text, nullable=False, comment="worker, controller or web"),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False, server_default="1"),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False),
    sa.Column("stopped_at", Timestamp),
    sa.Column("info", Json),
    comment="Kiln's own processes; each heartbeats here so health checks know who is alive.",
)
