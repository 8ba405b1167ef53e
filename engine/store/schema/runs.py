"""Workflow runs and their tasks: the DAG's edges, attempts, signals and the audit log."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.schema.columns import Id, Json, Timestamp, metadata, one_of, partial_index

# The CHECK constraints name the states of the enums in kiln.core.states, in their order.
TASK_STATES = tuple(s.value for s in TaskStatus)
WORKFLOW_STATES = tuple(s.value for s in WorkflowStatus)

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
        comment="'<route> <client key>' (e.g. 'POST /workflows k1'): a retried submission "
        "with the same key returns this run instead of a new one",
    ),
    sa.Column(
        "idempotency_fingerprint",
        sa.Text,
        comment="sha256 of the first request with idempotency_key (route, path, body); the "
        "same key with another request is refused",
    ),
    sa.Column("error", sa.Text),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.Column("parent_task_id", sa.BigInteger, comment="child run: the task that started it"),
    sa.Column("parent_workflow_id", sa.BigInteger, comment="child run: that task's run"),
    sa.Column("parent_attempt", sa.Integer, comment="child run: the parent task's try"),
    sa.Column("child_key", sa.Text, comment="child run: the key its parent started it with"),
    sa.Column(
        "awaited",
        sa.Boolean,
        nullable=False,
        server_default=sa.false(),
        comment="child run: its parent task waits for it to end",
    ),
    sa.Column("schedule_id", sa.BigInteger, comment="the schedule that started the run"),
    sa.Column(
        "rerun_of",
        sa.BigInteger,
        comment="rerun: the run whose succeeded tasks' results this one reused",
    ),
    sa.Column(
        "trace_context",
        sa.Text,
        comment="W3C traceparent of the span that submitted the run (OpenTelemetry); "
        "NULL: not traced",
    ),
    sa.CheckConstraint(one_of("status", WORKFLOW_STATES), name="status"),
    sa.CheckConstraint(one_of("on_error", ("stop", "continue")), name="on_error"),
    sa.Index(None, "status", "id"),
    sa.Index(None, "schedule_id", "status"),
    sa.Index(None, "finished_at"),
    sa.Index(None, "parent_task_id", "parent_attempt", "child_key", unique=True),
    sa.Index(None, "parent_workflow_id"),
    sa.Index(None, "rerun_of"),
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
    sa.Column(
        "queue",
        sa.Text,
        comment="worker pool that runs the task (kiln worker --queues); NULL: the default pool",
    ),
    sa.Column(
        "retry",
        Json,
        comment="the task's own retry policy (backoff_s, max_backoff_s, jitter, on); "
        "NULL: the deployment's defaults",
    ),
    sa.Column(
        "map_over",
        sa.Text,
        comment="map task: the {{Task.result...}} list it runs once per item of",
    ),
    sa.Column("map_index", sa.Integer, comment="mapped item: its place in the list"),
    sa.Column("mapped_from", sa.BigInteger, comment="mapped item: its map task (tasks.id)"),
    sa.Column(
        "resumes",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="claims that resumed the task after it waited for child runs; "
        "attempts - resumes is its try",
    ),
    sa.Column(
        "wake_at",
        Timestamp,
        comment="waiting: ready again at this time (a sleep's end, a signal's deadline)",
    ),
    sa.Column("state", Json, comment="what the handler saved for its next run (sleep_until)"),
    sa.Column("waiting_signal", sa.Text, comment="waiting: the signal it waits for"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column(
        "ready_at",
        Timestamp,
        comment="when the task last became dispatchable; FIFO order within a priority",
    ),
    sa.Column("queued_at", Timestamp),
    sa.Column("started_at", Timestamp),
    sa.Column("finished_at", Timestamp),
    sa.Column(
        "instance_id",
        sa.BigInteger,
        comment="model_type tasks: the TaskInstance (instances.id) the current attempt was "
        "placed on; kept after the task finishes",
    ),
    sa.Column(
        "instance_task_id",
        sa.Text,
        comment="the task's id on that instance, kiln-<task id>-<attempt> (idempotent enqueue)",
    ),
    sa.Column(
        "predicted",
        Json,
        comment="execution-time prediction the task was scheduled with: "
        "{quantiles, values (seconds), method, confidence}",
    ),
    sa.Column(
        "predicted_s",
        sa.Float,
        comment="expected execution time from predicted (0.7 q50 + 0.15 q25 + 0.15 q75), s",
    ),
    sa.Column(
        "actual_s",
        sa.Float,
        comment="execution time the instance measured for the last finished attempt, s",
    ),
    sa.CheckConstraint(one_of("status", TASK_STATES), name="status"),
    sa.CheckConstraint("max_attempts >= 1", name="max_attempts"),
    sa.UniqueConstraint("workflow_id", "name"),
    partial_index(
        "tasks_dispatch_idx",
        sa.desc("priority"),
        "ready_at",
        "id",
        where="status IN ('ready', 'retrying')",
    ),
    # The longest waiting, whatever their priority: an ordered dispatch ranks them too.
    partial_index(
        "tasks_age_idx",
        "ready_at",
        "id",
        where="status IN ('ready', 'retrying')",
    ),
    partial_index(
        "tasks_lease_idx",
        "lease_expires_at",
        where="status IN ('queued', 'running')",
    ),
    sa.Index(None, "workflow_id", "status"),
    # Partial: most tasks have neither, and a full index takes an entry for every row
    # version, which every status change writes (migration 0018).
    partial_index(
        "tasks_instance_id_idx",
        "instance_id",
        where="instance_id IS NOT NULL",
    ),
    partial_index(
        "tasks_mapped_from_map_index_idx",
        "mapped_from",
        "map_index",
        unique=True,
        where="mapped_from IS NOT NULL",
    ),
    # The controller looks for waiting tasks whose time came on every pass.
    partial_index(
        "tasks_wake_at_idx",
        "wake_at",
        where="status = 'waiting' AND wake_at IS NOT NULL",
    ),
    # The controller looks for map tasks to expand on every pass (kiln.store.maps).
    partial_index(
        "tasks_map_ready_idx",
        "id",
        where="status = 'ready' AND map_over IS NOT NULL",
    ),
    # The controller's periodic passes over model_type work must not scan every task: these
    # partial indexes keep them flat with a million tasks queued (docs/scale.md).
    # ... and so must its pass over the tasks of worker pools no live worker consumes: empty
    # while every task runs in the default pool.
    partial_index(
        "tasks_queue_waiting_idx",
        "queue",
        where="status IN ('ready', 'retrying') AND queue IS NOT NULL",
    ),
    partial_index(
        "tasks_model_type_waiting_idx",
        "model_type",
        where="status IN ('ready', 'retrying') AND model_type IS NOT NULL",
    ),
    partial_index(
        "tasks_unpredicted_idx",
        "id",
        where="status IN ('pending', 'ready', 'retrying') AND model_type IS NOT NULL "
        "AND predicted IS NULL",
    ),
    partial_index(
        "tasks_finished_at_idx",
        "finished_at",
        where="finished_at IS NOT NULL",
    ),
    comment="One row per task of a workflow run; the row is the task's truth.",
)

signals = sa.Table(
    "signals",
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
        "key",
        sa.Text,
        nullable=False,
        comment="the sender's idempotency key (a fresh one when none was given)",
    ),
    sa.Column("payload", Json),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("taken_by", sa.BigInteger, comment="the task that received it (tasks.id)"),
    sa.Column("taken_at", Timestamp),
    sa.UniqueConstraint("workflow_id", "name", "key"),
    comment="Signals sent to runs, kept until a task of the run receives them.",
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
    sa.Column(
        "entity_id",
        sa.BigInteger,
        comment="the task's, run's or pipeline's id; NULL for an operation (see entity_key)",
    ),
    sa.Column("workflow_id", sa.BigInteger),
    sa.Column("from_status", sa.Text),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column(
        "entity_key", sa.Text, comment="an operation's ic_id (operations have no numeric id)"
    ),
    sa.Column(
        "actor",
        sa.Text,
        comment="who made the change: api, api token <sha256 prefix>, a process id, recovery, "
        "cli; NULL when unknown (always on SQLite)",
    ),
    sa.Column(
        "reason",
        sa.Text,
        comment="why, when the change says it (cancel requested, lease expired, ...)",
    ),
    sa.Index(None, "entity", "entity_id"),
    sa.Index(None, "workflow_id"),
    comment="Audit log of every state transition, written by triggers on the state tables.",
)
