"""Sharded pipelines: contexts and their shards, pipelines, and the operations on them."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.core.operations import OPERATION_KINDS, OPERATION_STATES
from kiln.core.pipelines import PIPELINE_STATES, PIPELINE_TYPES
from kiln.store.schema.columns import Id, Json, Timestamp, metadata, one_of

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
    sa.CheckConstraint(one_of("status", PIPELINE_STATES), name="status"),
    sa.CheckConstraint(one_of("pipeline_type", PIPELINE_TYPES), name="pipeline_type"),
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
    sa.CheckConstraint(one_of("operation", OPERATION_KINDS), name="operation"),
    sa.CheckConstraint(one_of("status", OPERATION_STATES), name="status"),
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "pipeline_id"),
    sa.Index(None, "created_at"),
    sa.Index(None, "workflow_id"),
    comment="Interactive-control requests (dispatcher): pending -> processing -> "
    "completed | failed, applied by a controller.",
)
