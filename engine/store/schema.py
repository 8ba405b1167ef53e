"""Kiln's tables, as SQLAlchemy Core metadata. Alembic migrations create them; this module is
what the code queries with and what ``alembic check`` compares the migrated database against.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kiln.core.operations import OPERATION_KINDS, OPERATION_STATES
from kiln.core.pipelines import PIPELINE_STATES, PIPELINE_TYPES
from kiln.core.schedules import CatchUp, Overlap
from kiln.core.states import TaskStatus, WorkflowStatus

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

# The CHECK constraints name the states of the enums in kiln.core.states, in their order.
TASK_STATES = tuple(s.value for s in TaskStatus)
WORKFLOW_STATES = tuple(s.value for s in WorkflowStatus)


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
    sa.CheckConstraint(_in("status", WORKFLOW_STATES), name="status"),
    sa.CheckConstraint(_in("on_error", ("stop", "continue")), name="on_error"),
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
    # The longest waiting, whatever their priority: an ordered dispatch ranks them too.
    sa.Index(
        "tasks_age_idx",
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
    sa.Index(None, "instance_id"),
    sa.Index(None, "mapped_from", "map_index", unique=True),
    # The controller looks for waiting tasks whose time came on every pass.
    sa.Index(
        "tasks_wake_at_idx",
        "wake_at",
        postgresql_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL"),
        sqlite_where=sa.text("status = 'waiting' AND wake_at IS NOT NULL"),
    ),
    # The controller looks for map tasks to expand on every pass (kiln.store.maps).
    sa.Index(
        "tasks_map_ready_idx",
        "id",
        postgresql_where=sa.text("status = 'ready' AND map_over IS NOT NULL"),
        sqlite_where=sa.text("status = 'ready' AND map_over IS NOT NULL"),
    ),
    # The controller's periodic passes over model_type work must not scan every task: these
    # partial indexes keep them flat with a million tasks queued (docs/scale.md).
    sa.Index(
        "tasks_model_type_waiting_idx",
        "model_type",
        postgresql_where=sa.text("status IN ('ready', 'retrying') AND model_type IS NOT NULL"),
        sqlite_where=sa.text("status IN ('ready', 'retrying') AND model_type IS NOT NULL"),
    ),
    sa.Index(
        "tasks_unpredicted_idx",
        "id",
        postgresql_where=sa.text(
            "status IN ('pending', 'ready', 'retrying') AND model_type IS NOT NULL "
            "AND predicted IS NULL"
        ),
        sqlite_where=sa.text(
            "status IN ('pending', 'ready', 'retrying') AND model_type IS NOT NULL "
            "AND predicted IS NULL"
        ),
    ),
    sa.Index(
        "tasks_finished_at_idx",
        "finished_at",
        postgresql_where=sa.text("finished_at IS NOT NULL"),
        sqlite_where=sa.text("finished_at IS NOT NULL"),
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

# --- contexts, pipelines and operations (the dispatcher) -------------------------------


contexts = sa.Table(
    "contexts",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column(
        "source",
        sa.Text,
        comment="path or URL of a JSON array / JSON-lines file read by the workers; "
        "NULL when the rows are stored inline in context_shards",
    ),
    sa.Column("num_shards", sa.Integer, nullable=False),
    sa.Column("num_rows", sa.Integer, comment="rows over all shards; NULL for a source"),
    sa.Column("config", Json, nullable=False, comment="shared configuration every pipeline sees"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.CheckConstraint("num_shards >= 1", name="num_shards"),
    comment="Shared input of pipelines: a dataset split into shards, plus shared config.",
)

context_shards = sa.Table(
    "context_shards",
    metadata,
    sa.Column(
        "context_id",
        sa.BigInteger,
        sa.ForeignKey("contexts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("shard_index", sa.Integer, primary_key=True, comment="0-based, run in order"),
    sa.Column("rows", Json, nullable=False, comment="the shard's rows (a JSON array)"),
    sa.Column("num_rows", sa.Integer, nullable=False),
    comment="Inline rows of a context, one row per shard.",
)

pipelines = sa.Table(
    "pipelines",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("context_id", sa.BigInteger, sa.ForeignKey("contexts.id"), nullable=False),
    sa.Column("pipeline_type", sa.Text, nullable=False, comment="vllm, openai or python"),
    sa.Column(
        "status",
        sa.Text,
        nullable=False,
        server_default="new",
        comment="follows the backing workflow (see kiln.store.pipelines.PipelineStatus); "
        "synchronised by the controller, 'deleted' set by the delete operation",
    ),
    sa.Column(
        "workflow_id",
        sa.BigInteger,
        sa.ForeignKey("workflows.id"),
        unique=True,
        comment="the workflow run whose chained tasks are this pipeline's shards",
    ),
    sa.Column("model_config", Json, nullable=False),
    sa.Column("sampling_params", Json, comment="vllm: passed to the TaskInstance per row"),
    sa.Column(
        "client_config",
        Json,
        comment="openai: base_url and secrets such as api_key; never returned by the API",
    ),
    sa.Column("rpm_limit", sa.Integer, comment="openai: requests per minute"),
    sa.Column("tpm_limit", sa.Integer, comment="openai: tokens per minute"),
    sa.Column(
        "cloned_from",
        sa.BigInteger,
        sa.ForeignKey("pipelines.id"),
        comment="the pipeline this one was cloned from",
    ),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
    sa.CheckConstraint(_in("status", PIPELINE_STATES), name="status"),
    sa.CheckConstraint(_in("pipeline_type", PIPELINE_TYPES), name="pipeline_type"),
    sa.Index(None, "status", "id"),
    sa.Index(None, "context_id"),
    comment="One configuration run over every shard of a context, one shard at a time.",
)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("ic_id", sa.Text, primary_key=True, comment="uuid4 hex, returned to the caller"),
    sa.Column(
        "pipeline_id",
        sa.BigInteger,
        sa.ForeignKey("pipelines.id"),
        comment="the pipeline operated on (clone: the parent, or NULL)",
    ),
    sa.Column(
        "workflow_id",
        sa.BigInteger,
        sa.ForeignKey("workflows.id"),
        comment="the workflow operated on; operations on one workflow are applied in order",
    ),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("request_data", Json, nullable=False, comment="the request body (may hold secrets)"),
    sa.Column("result", Json, comment="clone: the new pipeline's id"),
    sa.Column("error", sa.Text, comment="why the operation failed, for people"),
    sa.Column(
        "idempotency_key",
        sa.Text,
        unique=True,
        comment="'<route> <client key>' (e.g. 'POST /dispatcher/stop-pipeline k1'): a retried "
        "request with the same key returns this operation",
    ),
    sa.Column(
        "idempotency_fingerprint",
        sa.Text,
        comment="sha256 of the first request with idempotency_key (route, path, body); the "
        "same key with another request is refused",
    ),
    sa.Column("claimed_by", sa.Text, comment="the controller process that processed it"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("claimed_at", Timestamp),
    sa.Column("processed_at", Timestamp),
    sa.CheckConstraint(_in("operation", OPERATION_KINDS), name="operation"),
    sa.CheckConstraint(_in("status", OPERATION_STATES), name="status"),
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "pipeline_id"),
    sa.Index(None, "created_at"),
    sa.Index(None, "workflow_id"),
    comment="Interactive-control requests (dispatcher): pending -> processing -> "
    "completed | failed, applied by a controller.",
)

# --- TaskInstances, predictions and the scheduler ----------------------------------------

INSTANCE_STATES = ("running", "stopped", "draining", "offline", "lost")

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column(
        "url",
        sa.Text,
        nullable=False,
        unique=True,
        comment="where workers reach the instance; registering the same url again is the same "
        "instance coming back",
    ),
    sa.Column("model_type", sa.Text, nullable=False),
    sa.Column("hardware", sa.Text),
    sa.Column("software_version", sa.Text),
    sa.Column("capabilities", Json, nullable=False, comment="as registered (a JSON array)"),
    sa.Column(
        "max_concurrency", sa.Integer, nullable=False, comment="concurrent tasks per replica"
    ),
    sa.Column(
        "slots",
        sa.Integer,
        nullable=False,
        comment="concurrent tasks right now (replicas x max_concurrency), from the heartbeat; "
        "Kiln keeps at most this many of its tasks in flight on the instance",
    ),
    sa.Column(
        "status",
        sa.Text,
        nullable=False,
        server_default="running",
        comment="as last reported (running, stopped, draining, offline), or lost: no "
        "heartbeat for KILN_INSTANCE_LOST_AFTER_S; only running instances receive tasks",
    ),
    sa.Column("active_tasks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("queue_size", sa.Integer, nullable=False, server_default="0"),
    sa.Column("counters", Json, comment="{completed, failed, enqueued} from the heartbeat"),
    sa.Column(
        "speed_factor",
        sa.Float,
        nullable=False,
        server_default="1.0",
        comment="actual / predicted execution time, smoothed; placement scales this "
        "instance's queue and new tasks by it",
    ),
    sa.Column("registered_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False),
    sa.Column("lost_at", Timestamp),
    sa.CheckConstraint(_in("status", INSTANCE_STATES), name="status"),
    sa.CheckConstraint("slots >= 0", name="slots"),
    sa.Index(None, "status", "heartbeat_at"),
    comment="TaskInstances registered with Kiln (POST /instances) and their last heartbeat.",
)

instance_capabilities = sa.Table(
    "instance_capabilities",
    metadata,
    sa.Column(
        "instance_id",
        sa.BigInteger,
        sa.ForeignKey("instances.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "capability",
        sa.Text,
        primary_key=True,
        comment="a model_type (or capability) tasks may name; always includes the instance's "
        "own model_type",
    ),
    sa.Index(None, "capability"),
    comment="Routing: which instances may receive tasks naming each model_type/capability.",
)

observations = sa.Table(
    "observations",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("model_type", sa.Text, nullable=False),
    sa.Column("hardware", sa.Text, comment="the instance's hardware; NULL if unknown"),
    sa.Column(
        "features",
        Json,
        nullable=False,
        comment="size features of the task (e.g. input_tokens, output_tokens)",
    ),
    sa.Column("duration_s", sa.Float, nullable=False, comment="measured execution time, s"),
    sa.Column("task_id", sa.BigInteger, comment="the task measured (no foreign key: kept after)"),
    sa.Column("instance_id", sa.BigInteger, comment="the instance that ran it"),
    sa.Column("observed_at", Timestamp, nullable=False),
    sa.CheckConstraint("duration_s >= 0", name="duration_s"),
    sa.Index(None, "model_type", "id"),
    comment="Execution times Kiln observed; the learned predictor is trained on these.",
)

scheduler_state = sa.Table(
    "scheduler_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, comment="always 1: one scheduler per database"),
    sa.Column(
        "policy",
        sa.Text,
        nullable=False,
        server_default="FIFO",
        comment="queue-ordering policy: FIFO, RoundRobin, Priority, Fair, ShortestPredicted",
    ),
    sa.Column("params", Json, nullable=False, comment="tuning parameters per policy name"),
    sa.Column(
        "placement",
        sa.Text,
        nullable=False,
        server_default="min_expected_completion",
        comment="placement strategy for model_type tasks (kiln.core.scheduling.placement)",
    ),
    sa.Column(
        "state",
        Json,
        nullable=False,
        comment="kiln.core.scheduling.SchedulerState (vruntimes, round-robin turn, counters)",
    ),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
    comment="The scheduler's persisted policy and state, shared by controllers and the API.",
)

# --- cron schedules ----------------------------------------------------------------------

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
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
        comment="finished runs of this schedule are pruned after this; NULL: KILN_RETENTION_DAYS",
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
    sa.CheckConstraint(_in("overlap", tuple(o.value for o in Overlap)), name="overlap"),
    sa.CheckConstraint(_in("catch_up", tuple(c.value for c in CatchUp)), name="catch_up"),
    sa.Index(None, "paused", "next_fire_at"),
    comment="Cron schedules: each fire time submits the schedule's workflow once.",
)

FIRE_OUTCOMES = ("started", "skipped")

schedule_fires = sa.Table(
    "schedule_fires",
    metadata,
    sa.Column(
        "schedule_id",
        sa.BigInteger,
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("fire_time", Timestamp, primary_key=True, comment="the cron time, UTC"),
    sa.Column("fired_at", Timestamp, nullable=False, comment="when a controller handled it"),
    sa.Column(
        "outcome",
        sa.Text,
        nullable=False,
        comment="started, or skipped (overlap=skip and the previous run unfinished)",
    ),
    sa.Column("workflow_id", sa.BigInteger, comment="the run started (kept after pruning)"),
    sa.CheckConstraint(_in("outcome", FIRE_OUTCOMES), name="outcome"),
    sa.Index(None, "workflow_id"),
    comment="One row per (schedule, fire time) handled: the key that fires each once.",
)
