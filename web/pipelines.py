"""Contexts (shared, sharded input) and pipelines (one configuration over every shard)."""

from __future__ import annotations

from flask_smorest import Blueprint
from kiln.core.handlers import resolve_handler
from kiln.store import pipeline_contexts as cx
from kiln.store import pipelines as pl
from kiln.web.common import MUTATING_DOC, kiln, render_pipeline
from kiln.web.schemas import (
    ContextCreateSchema,
    ContextSchema,
    PipelineCreateSchema,
    PipelineDetailSchema,
    PipelineListQuerySchema,
    PipelineListSchema,
)

blp = Blueprint(
    "pipelines",
    __name__,
    description="Contexts (sharded input) and pipelines (a configuration run over each shard).",
)
ID = "int(max=9223372036854775807)"


@blp.post("/contexts")
@blp.arguments(ContextCreateSchema)
@blp.response(201, ContextSchema)
@blp.doc(security=MUTATING_DOC["security"])
def create_context(data):  # type: ignore[no-untyped-def]
    """Create a context from ``shards`` (row lists), ``rows`` + ``num_shards``, or a
    ``source`` path/URL + ``num_shards``."""
    shards, num_shards = cx.shards_from_request(
        shards=data.get("shards"),
        rows=data.get("rows"),
        source=data.get("source"),
        num_shards=data.get("num_shards"),
    )
    context_id = kiln().txn(
        lambda c: cx.create_context_txn(
            c,
            name=data["name"],
            config=data["config"],
            shards=shards,
            num_shards=num_shards,
            source=data.get("source"),
        )
    )
    return kiln().read(lambda c: cx.get_context(c, context_id))


@blp.get(f"/contexts/<{ID}:context_id>")
@blp.response(200, ContextSchema)
def get_context(context_id: int):  # type: ignore[no-untyped-def]
    """A context: its config, source and per-shard row counts (not the rows)."""
    return kiln().read(lambda c: cx.get_context(c, context_id))


@blp.post("/pipelines")
@blp.arguments(PipelineCreateSchema)
@blp.response(201, PipelineDetailSchema)
@blp.doc(security=MUTATING_DOC["security"])
def create_pipeline(data):  # type: ignore[no-untyped-def]
    """Create a pipeline on a context; its first shard is ready to run at once."""
    config = pl.validate_config(data)
    if config.pipeline_type == "python":
        resolve_handler(config.model_config["handler"])
    pipeline_id = kiln().txn(
        lambda c: pl.create_pipeline_txn(c, config, context_id=data["context_id"])
    )
    return render_pipeline(kiln().read(lambda c: pl.get_pipeline(c, pipeline_id)))


@blp.get("/pipelines")
@blp.arguments(PipelineListQuerySchema, location="query")
@blp.response(200, PipelineListSchema)
def list_pipelines(query):  # type: ignore[no-untyped-def]
    """Pipelines, newest first, with progress; page with ``before_id``."""
    rows = kiln().read(lambda c: pl.list_pipelines(c, **query))
    return {"pipelines": [render_pipeline(p) for p in rows]}


@blp.get(f"/pipelines/<{ID}:pipeline_id>")
@blp.response(200, PipelineDetailSchema)
def get_pipeline(pipeline_id: int):  # type: ignore[no-untyped-def]
    """A pipeline: status, progress ``k/N``, and each shard's status and result."""
    return render_pipeline(kiln().read(lambda c: pl.get_pipeline(c, pipeline_id)))
