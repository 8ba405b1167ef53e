"""core schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24 08:49:38.918233
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Every status change of a task or workflow is recorded in `events` by a trigger, so no code
# path can forget to write the audit log.
PG_EVENT_FUNCTION = """
CREATE OR REPLACE FUNCTION kiln_record_event() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at)
        VALUES (
            TG_ARGV[0],
            NEW.id::text,
            CASE WHEN TG_ARGV[0] = 'task' THEN (to_jsonb(NEW) ->> 'workflow_id')::bigint
                 ELSE NEW.id END,
            OLD.status,
            NEW.status,
            CASE WHEN TG_ARGV[0] = 'task' THEN (to_jsonb(NEW) ->> 'attempts')::int END,
            clock_timestamp()
        );
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _create_event_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_EVENT_FUNCTION)
        for table, entity in (("tasks", "task"), ("workflows", "workflow")):
            op.execute(
                f"CREATE TRIGGER {table}_record_event AFTER UPDATE OF status ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION kiln_record_event('{entity}')"
            )
        return
    op.execute(
        "CREATE TRIGGER tasks_record_event AFTER UPDATE OF status ON tasks "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at) "
        f"VALUES ('task', NEW.id, NEW.workflow_id, OLD.status, NEW.status, NEW.attempts, {SQLITE_NOW}); "
        "END"
    )
    op.execute(
        "CREATE TRIGGER workflows_record_event AFTER UPDATE OF status ON workflows "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at) "
        f"VALUES ('workflow', NEW.id, NEW.id, OLD.status, NEW.status, {SQLITE_NOW}); "
        "END"
    )


def _drop_event_triggers() -> None:
    op.execute(
        "DROP TRIGGER IF EXISTS tasks_record_event"
        + (" ON tasks" if op.get_bind().dialect.name == "postgresql" else "")
    )
    op.execute(
        "DROP TRIGGER IF EXISTS workflows_record_event"
        + (" ON workflows" if op.get_bind().dialect.name == "postgresql" else "")
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS kiln_record_event()")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "entity", sa.Text(), nullable=False, comment="task, workflow, operation, pipeline"
        ),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("workflow_id", sa.BigInteger(), nullable=True),
        sa.Column("from_status", sa.Text(), nullable=True),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("events_pkey")),
        comment="Audit log of every state transition, written by triggers on the state tables.",
    )
    op.create_index(
        op.f("events_entity_entity_id_idx"), "events", ["entity", "entity_id"], unique=False
    )
    op.create_index(op.f("events_workflow_id_idx"), "events", ["workflow_id"], unique=False)
    op.create_table(
        "processes",
        sa.Column("id", sa.Text(), nullable=False, comment="host:pid:random, unique per process"),
        sa.Column("kind", sa.Text(), nullable=False, comment="worker, controller or web"),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), server_default="1", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "info",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("processes_pkey")),
        comment="Kiln's own processes; each heartbeats here so health checks know who is alive.",
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column(
            "on_error",
            sa.Text(),
            server_default="stop",
            nullable=False,
            comment="stop: a failed task fails the run at once; continue: independent branches go on",
        ),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "definition",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="the definition as submitted",
        ),
        sa.Column(
            "idempotency_key",
            sa.Text(),
            nullable=True,
            comment="a retried submission with the same key returns this run instead of a new one",
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "on_error IN ('stop', 'continue')", name=op.f("workflows_on_error_check")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled')",
            name=op.f("workflows_status_check"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("workflows_pkey")),
        sa.UniqueConstraint("idempotency_key", name=op.f("workflows_idempotency_key_key")),
        comment="One row per workflow run (a DAG of tasks).",
    )
    op.create_index(op.f("workflows_status_id_idx"), "workflows", ["status", "id"], unique=False)
    op.create_table(
        "tasks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("workflow_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "handler",
            sa.Text(),
            nullable=True,
            comment="registered name or 'package.module:function' the worker calls",
        ),
        sa.Column(
            "model_type",
            sa.Text(),
            nullable=True,
            comment="run on a TaskInstance serving this model type",
        ),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="parameters as submitted; {{Task.result...}} references resolved at claim time",
        ),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column(
            "attempts",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="claims made so far; incremented when a worker claims (queued -> running)",
        ),
        sa.Column(
            "deps_remaining",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="dependencies not yet succeeded; the task becomes ready when this reaches 0",
        ),
        sa.Column(
            "lease_owner",
            sa.Text(),
            nullable=True,
            comment="process id of the worker holding the task",
        ),
        sa.Column(
            "lease_expires_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="queued: message presumed lost after this; running: worker presumed dead",
        ),
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="retrying: not dispatched before this time",
        ),
        sa.Column(
            "dispatch_count",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="messages sent for this task, re-sends after a lost message included",
        ),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "progress",
            sa.Float(),
            nullable=True,
            comment="0..1 as last reported by the running handler",
        ),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column(
            "waiting_reason",
            sa.Text(),
            nullable=True,
            comment="why a ready task is not being dispatched",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "ready_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="when the task last became dispatchable; FIFO order within a priority",
        ),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'ready', 'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled', 'upstream_failed')",
            name=op.f("tasks_status_check"),
        ),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("tasks_max_attempts_check")),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("tasks_workflow_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("tasks_pkey")),
        sa.UniqueConstraint("workflow_id", "name", name=op.f("tasks_workflow_id_name_key")),
        comment="One row per task of a workflow run; the row is the task's truth.",
    )
    op.create_index(
        "tasks_dispatch_idx",
        "tasks",
        [sa.literal_column("priority DESC"), "ready_at", "id"],
        unique=False,
        postgresql_where=sa.text("status IN ('ready', 'retrying')"),
        sqlite_where=sa.text("status IN ('ready', 'retrying')"),
    )
    op.create_index(
        "tasks_lease_idx",
        "tasks",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
        sqlite_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        op.f("tasks_workflow_id_status_idx"), "tasks", ["workflow_id", "status"], unique=False
    )
    op.create_table(
        "task_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column(
            "worker", sa.Text(), nullable=False, comment="process id of the worker that ran it"
        ),
        sa.Column(
            "outcome",
            sa.Text(),
            server_default="running",
            nullable=False,
            comment="running, succeeded, failed, timed_out, lost (lease expired), stale",
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("task_attempts_task_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("task_attempts_pkey")),
        sa.UniqueConstraint("task_id", "attempt", name=op.f("task_attempts_task_id_attempt_key")),
        comment="History: one row per claim of a task by a worker.",
    )
    op.create_table(
        "task_dependencies",
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("depends_on_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["tasks.id"],
            name=op.f("task_dependencies_depends_on_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("task_dependencies_task_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "depends_on_id", name=op.f("task_dependencies_pkey")),
        comment="Edges of the DAG: task_id runs after depends_on_id succeeded.",
    )
    op.create_index(
        op.f("task_dependencies_depends_on_id_idx"),
        "task_dependencies",
        ["depends_on_id"],
        unique=False,
    )
    _create_event_triggers()


def downgrade() -> None:
    _drop_event_triggers()
    op.drop_index(op.f("task_dependencies_depends_on_id_idx"), table_name="task_dependencies")
    op.drop_table("task_dependencies")
    op.drop_table("task_attempts")
    op.drop_index(op.f("tasks_workflow_id_status_idx"), table_name="tasks")
    op.drop_index(
        "tasks_lease_idx",
        table_name="tasks",
        postgresql_where=sa.text("status IN ('queued', 'running')"),
        sqlite_where=sa.text("status IN ('queued', 'running')"),
    )
    op.drop_index(
        "tasks_dispatch_idx",
        table_name="tasks",
        postgresql_where=sa.text("status IN ('ready', 'retrying')"),
        sqlite_where=sa.text("status IN ('ready', 'retrying')"),
    )
    op.drop_table("tasks")
    op.drop_index(op.f("workflows_status_id_idx"), table_name="workflows")
    op.drop_table("workflows")
    op.drop_table("processes")
    op.drop_index(op.f("events_workflow_id_idx"), table_name="events")
    op.drop_index(op.f("events_entity_entity_id_idx"), table_name="events")
    op.drop_table("events")
