"""Who does the work: Kiln's own processes, the TaskInstances, the run times observed on them
and the scheduler's state."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.store.schema.columns import Id, Json, Timestamp, metadata, one_of

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
    sa.CheckConstraint(one_of("status", INSTANCE_STATES), name="status"),
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
