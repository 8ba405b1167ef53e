"""contexts, pipelines and operations (the dispatcher)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 08:56:20.442157
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Status changes of pipelines and operations go to `events` like those of tasks and workflows
# (0001). 0001's kiln_record_event() reads NEW.id, which operations do not have (their key is
# ic_id), so these tables get their own function that takes the key column as an argument.
PG_ENTITY_EVENT_FUNCTION = """
CREATE OR REPLACE FUNCTION kiln_record_entity_event() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at)
        VALUES (
            TG_ARGV[0],
            to_jsonb(NEW) ->> TG_ARGV[1],
            (to_jsonb(NEW) ->> 'workflow_id')::bigint,
            OLD.status,
            NEW.status,
            clock_timestamp()
        );
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
TRIGGERS = (("pipelines", "pipeline", "id"), ("operations", "operation", "ic_id"))


def _create_event_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_ENTITY_EVENT_FUNCTION)
        for table, entity, key in TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {table}_record_event AFTER UPDATE OF status ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION kiln_record_entity_event('{entity}', '{key}')"
            )
        return
    for table, entity, key in TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {table}_record_event AFTER UPDATE OF status ON {table} "
            "WHEN OLD.status IS NOT NEW.status BEGIN "
            "INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, at) "
            f"VALUES ('{entity}', NEW.{key}, NEW.workflow_id, OLD.status, NEW.status, {SQLITE_NOW}); "
            "END"
        )


def _drop_event_triggers() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, _, _ in TRIGGERS:
        op.execute(
            f"DROP TRIGGER IF EXISTS {table}_record_event" + (f" ON {table}" if postgres else "")
        )
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS kiln_record_entity_event()")


def upgrade() -> None:
    op.create_table(
        "contexts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "source",
            sa.Text(),
            nullable=True,
            comment="path or URL of a JSON array / JSON-lines file read by the workers; NULL when the rows are stored inline in context_shards",
        ),
        sa.Column("num_shards", sa.Integer(), nullable=False),
        sa.Column(
            "num_rows",
            sa.Integer(),
            nullable=True,
            comment="rows over all shards; NULL for a source",
        ),
        sa.Column(
            "config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="shared configuration every pipeline sees",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("num_shards >= 1", name=op.f("contexts_num_shards_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("contexts_pkey")),
        comment="Shared input of pipelines: a dataset split into shards, plus shared config.",
    )
    op.create_table(
        "context_shards",
        sa.Column("context_id", sa.BigInteger(), nullable=False),
        sa.Column("shard_index", sa.Integer(), nullable=False, comment="0-based, run in order"),
        sa.Column(
            "rows",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="the shard's rows (a JSON array)",
        ),
        sa.Column("num_rows", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["context_id"],
            ["contexts.id"],
            name=op.f("context_shards_context_id_fkey"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("context_id", "shard_index", name=op.f("context_shards_pkey")),
        comment="Inline rows of a context, one row per shard.",
    )
    op.create_table(
        "pipelines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("context_id", sa.BigInteger(), nullable=False),
        sa.Column("pipeline_type", sa.Text(), nullable=False, comment="vllm, openai or python"),
        sa.Column(
            "status",
            sa.Text(),
            server_default="new",
            nullable=False,
            comment="follows the backing workflow (see kiln.store.pipelines.PipelineStatus); synchronised by the controller, 'deleted' set by the delete operation",
        ),
        sa.Column(
            "workflow_id",
            sa.BigInteger(),
            nullable=True,
            comment="the workflow run whose chained tasks are this pipeline's shards",
        ),
        sa.Column(
            "model_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "sampling_params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="vllm: passed to the TaskInstance per row",
        ),
        sa.Column(
            "client_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="openai: base_url and secrets such as api_key; never returned by the API",
        ),
        sa.Column("rpm_limit", sa.Integer(), nullable=True, comment="openai: requests per minute"),
        sa.Column("tpm_limit", sa.Integer(), nullable=True, comment="openai: tokens per minute"),
        sa.Column(
            "cloned_from",
            sa.BigInteger(),
            nullable=True,
            comment="the pipeline this one was cloned from",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "pipeline_type IN ('vllm', 'openai', 'python')",
            name=op.f("pipelines_pipeline_type_check"),
        ),
        sa.CheckConstraint(
            "status IN ('new', 'ongoing', 'stopped', 'completed', 'failed', 'deleted')",
            name=op.f("pipelines_status_check"),
        ),
        sa.ForeignKeyConstraint(
            ["cloned_from"], ["pipelines.id"], name=op.f("pipelines_cloned_from_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["context_id"], ["contexts.id"], name=op.f("pipelines_context_id_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("pipelines_workflow_id_fkey")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pipelines_pkey")),
        sa.UniqueConstraint("workflow_id", name=op.f("pipelines_workflow_id_key")),
        comment="One configuration run over every shard of a context, one shard at a time.",
    )
    op.create_index(op.f("pipelines_context_id_idx"), "pipelines", ["context_id"], unique=False)
    op.create_index(op.f("pipelines_status_id_idx"), "pipelines", ["status", "id"], unique=False)
    op.create_table(
        "operations",
        sa.Column("ic_id", sa.Text(), nullable=False, comment="uuid4 hex, returned to the caller"),
        sa.Column(
            "pipeline_id",
            sa.BigInteger(),
            nullable=True,
            comment="the pipeline operated on (clone: the parent, or NULL)",
        ),
        sa.Column(
            "workflow_id",
            sa.BigInteger(),
            nullable=True,
            comment="the workflow operated on; operations on one workflow are applied in order",
        ),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column(
            "request_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="the request body (may hold secrets)",
        ),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="clone: the new pipeline's id",
        ),
        sa.Column(
            "error", sa.Text(), nullable=True, comment="why the operation failed, for people"
        ),
        sa.Column(
            "idempotency_key",
            sa.Text(),
            nullable=True,
            comment="a retried request with the same key returns this operation",
        ),
        sa.Column(
            "claimed_by",
            sa.Text(),
            nullable=True,
            comment="the controller process that processed it",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "operation IN ('stop', 'resume', 'delete', 'clone', 'cancel', 'pause')",
            name=op.f("operations_operation_check"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed')",
            name=op.f("operations_status_check"),
        ),
        sa.ForeignKeyConstraint(
            ["pipeline_id"], ["pipelines.id"], name=op.f("operations_pipeline_id_fkey")
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"], ["workflows.id"], name=op.f("operations_workflow_id_fkey")
        ),
        sa.PrimaryKeyConstraint("ic_id", name=op.f("operations_pkey")),
        sa.UniqueConstraint("idempotency_key", name=op.f("operations_idempotency_key_key")),
        comment="Interactive-control requests (dispatcher): pending -> processing -> completed | failed, applied by a controller.",
    )
    op.create_index(op.f("operations_created_at_idx"), "operations", ["created_at"], unique=False)
    op.create_index(op.f("operations_pipeline_id_idx"), "operations", ["pipeline_id"], unique=False)
    op.create_index(
        op.f("operations_status_created_at_idx"),
        "operations",
        ["status", "created_at"],
        unique=False,
    )
    _create_event_triggers()


def downgrade() -> None:
    _drop_event_triggers()
    op.drop_index(op.f("operations_status_created_at_idx"), table_name="operations")
    op.drop_index(op.f("operations_pipeline_id_idx"), table_name="operations")
    op.drop_index(op.f("operations_created_at_idx"), table_name="operations")
    op.drop_table("operations")
    op.drop_index(op.f("pipelines_status_id_idx"), table_name="pipelines")
    op.drop_index(op.f("pipelines_context_id_idx"), table_name="pipelines")
    op.drop_table("pipelines")
    op.drop_table("context_shards")
    op.drop_table("contexts")
