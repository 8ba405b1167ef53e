"""instances, observations and scheduler state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 08:58:22.337427
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# For the operator asking "which instance is overloaded?": Kiln's tasks in flight on each
# instance against its slots, and the predicted work they add up to.
INSTANCE_LOAD_VIEW = """
CREATE VIEW instance_load AS
SELECT i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
       COUNT(t.id) AS kiln_tasks_in_flight,
       COALESCE(SUM(t.predicted_s), 0) AS predicted_work_s,
       i.speed_factor, i.active_tasks, i.queue_size
FROM instances i
LEFT JOIN tasks t ON t.instance_id = i.id AND t.status = 'running'
GROUP BY i.id, i.name, i.model_type, i.hardware, i.status, i.slots, i.heartbeat_at,
         i.speed_factor, i.active_tasks, i.queue_size
"""


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "url",
            sa.Text(),
            nullable=False,
            comment="where workers reach the instance; registering the same url again is the same instance coming back",
        ),
        sa.Column("model_type", sa.Text(), nullable=False),
        sa.Column("hardware", sa.Text(), nullable=True),
        sa.Column("software_version", sa.Text(), nullable=True),
        sa.Column(
            "capabilities",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="as registered (a JSON array)",
        ),
        sa.Column(
            "max_concurrency", sa.Integer(), nullable=False, comment="concurrent tasks per replica"
        ),
        sa.Column(
            "slots",
            sa.Integer(),
            nullable=False,
            comment="concurrent tasks right now (replicas x max_concurrency), from the heartbeat; Kiln keeps at most this many of its tasks in flight on the instance",
        ),
        sa.Column(
            "status",
            sa.Text(),
            server_default="running",
            nullable=False,
            comment="as last reported (running, stopped, draining, offline), or lost: no heartbeat for KILN_INSTANCE_LOST_AFTER_S; only running instances receive tasks",
        ),
        sa.Column("active_tasks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("queue_size", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "counters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="{completed, failed, enqueued} from the heartbeat",
        ),
        sa.Column(
            "speed_factor",
            sa.Float(),
            server_default="1.0",
            nullable=False,
            comment="actual / predicted execution time, smoothed; placement scales this instance's queue and new tasks by it",
        ),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lost_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'stopped', 'draining', 'offline', 'lost')",
            name=op.f("instances_status_check"),
        ),
        sa.CheckConstraint("slots >= 0", name=op.f("instances_slots_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("instances_pkey")),
        sa.UniqueConstraint("url", name=op.f("instances_url_key")),
        comment="TaskInstances registered with Kiln (POST /instances) and their last heartbeat.",
    )
    op.create_index(
        op.f("instances_status_heartbeat_at_idx"),
        "instances",
        ["status", "heartbeat_at"],
        unique=False,
    )
    op.create_table(
        "observations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_type", sa.Text(), nullable=False),
        sa.Column(
            "hardware", sa.Text(), nullable=True, comment="the instance's hardware; NULL if unknown"
        ),
        sa.Column(
            "features",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="size features of the task (e.g. input_tokens, output_tokens)",
        ),
        sa.Column("duration_s", sa.Float(), nullable=False, comment="measured execution time, s"),
        sa.Column(
            "task_id",
            sa.BigInteger(),
            nullable=True,
            comment="the task measured (no foreign key: kept after)",
        ),
        sa.Column(
            "instance_id", sa.BigInteger(), nullable=True, comment="the instance that ran it"
        ),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("duration_s >= 0", name=op.f("observations_duration_s_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("observations_pkey")),
        comment="Execution times Kiln observed; the learned predictor is trained on these.",
    )
    op.create_index(
        op.f("observations_model_type_id_idx"), "observations", ["model_type", "id"], unique=False
    )
    op.create_table(
        "scheduler_state",
        sa.Column(
            "id", sa.Integer(), nullable=False, comment="always 1: one scheduler per database"
        ),
        sa.Column(
            "policy",
            sa.Text(),
            server_default="FIFO",
            nullable=False,
            comment="queue-ordering policy: FIFO, RoundRobin, Priority, Fair, ShortestPredicted",
        ),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="tuning parameters per policy name",
        ),
        sa.Column(
            "placement",
            sa.Text(),
            server_default="min_expected_completion",
            nullable=False,
            comment="placement strategy for model_type tasks (kiln.core.scheduling.placement)",
        ),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="kiln.core.scheduling.SchedulerState (vruntimes, round-robin turn, counters)",
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("scheduler_state_single_row_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("scheduler_state_pkey")),
        comment="The scheduler's persisted policy and state, shared by controllers and the API.",
    )
    op.create_table(
        "instance_capabilities",
        sa.Column("instance_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "capability",
            sa.Text(),
            nullable=False,
            comment="a model_type (or capability) tasks may name; always includes the instance's own model_type",
        ),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("instance_capabilities_instance_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "instance_id", "capability", name=op.f("instance_capabilities_pkey")
        ),
        comment="Routing: which instances may receive tasks naming each model_type/capability.",
    )
    op.create_index(
        op.f("instance_capabilities_capability_idx"),
        "instance_capabilities",
        ["capability"],
        unique=False,
    )
    op.add_column(
        "tasks",
        sa.Column(
            "instance_id",
            sa.BigInteger(),
            nullable=True,
            comment="model_type tasks: the TaskInstance (instances.id) the current attempt was placed on; kept after the task finishes",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "instance_task_id",
            sa.Text(),
            nullable=True,
            comment="the task's id on that instance, kiln-<task id>-<attempt> (idempotent enqueue)",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "predicted",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="execution-time prediction the task was scheduled with: {quantiles, values (seconds), method, confidence}",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "predicted_s",
            sa.Float(),
            nullable=True,
            comment="expected execution time from predicted (0.7 q50 + 0.15 q25 + 0.15 q75), s",
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "actual_s",
            sa.Float(),
            nullable=True,
            comment="execution time the instance measured for the last finished attempt, s",
        ),
    )
    op.create_index(op.f("tasks_instance_id_idx"), "tasks", ["instance_id"], unique=False)
    op.execute(INSTANCE_LOAD_VIEW)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "COMMENT ON VIEW instance_load IS 'Per instance: Kiln tasks running on it against its "
            "slots, and their predicted work in seconds.'"
        )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS instance_load")
    op.drop_index(op.f("tasks_instance_id_idx"), table_name="tasks")
    op.drop_column("tasks", "actual_s")
    op.drop_column("tasks", "predicted_s")
    op.drop_column("tasks", "predicted")
    op.drop_column("tasks", "instance_task_id")
    op.drop_column("tasks", "instance_id")
    op.drop_index(op.f("instance_capabilities_capability_idx"), table_name="instance_capabilities")
    op.drop_table("instance_capabilities")
    op.drop_table("scheduler_state")
    op.drop_index(op.f("observations_model_type_id_idx"), table_name="observations")
    op.drop_table("observations")
    op.drop_index(op.f("instances_status_heartbeat_at_idx"), table_name="instances")
    op.drop_table("instances")
