"""Contexts (shared, sharded input) and pipelines (one configuration over every shard)."""

from __future__ import annotations

from flask_smorest import Blueprint

from kiln.web.common import MUTATING_DOC, kiln, render_context, render_pipeline
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
@blp.arguments(ContextCreateSchema())
@blp.response(201, ContextSchema)
@blp.doc(security=MUTATING_DOC["security"])
def create_context(data):  # type: ignore[no-untyped-def]
    """Create a context from ``shards`` (row lists), ``rows`` + ``num_shards``, or a
    ``source`` path/URL + ``num_shards``."""
    return render_context(
        kiln().pipelines.create_context(
            name=data["name"],
            config=data["config"],
            shards=data.get("shards"),
            rows=data.get("rows"),
            source=data.get("source"),
            num_shards=data.get("num_shards"),
        )
    )


@blp.get(f"/contexts/<{ID}:context_id>")
@blp.response(200, ContextSchema)
def get_context(context_id: int):  # type: ignore[no-untyped-def]
    """A context: its config (secrets as ``***``), source and per-shard row counts (not the
    rows)."""
    return render_context(kiln().pipelines.context(context_id))


@blp.post("/pipelines")
@blp.arguments(PipelineCreateSchema())
@blp.response(201, PipelineDetailSchema)
@blp.doc(security=MUTATING_DOC["security"])
def create_pipeline(data):  # type: ignore[no-untyped-def]
    """Create a pipeline on a context; its first shard is ready to run at once."""
    return render_pipeline(kiln().pipelines.create(data, context_id=data["context_id"]))


@blp.get("/pipelines")
@blp.arguments(PipelineListQuerySchema(), location="query")
@blp.response(200, PipelineListSchema)
def list_pipelines(query):  # type: ignore[no-untyped-def]
    """Pipelines, newest first, with progress; page with ``before_id``."""
    return {"pipelines": [render_pipeline(p) for p in kiln().pipelines.list(**query)]}


@blp.get(f"/pipelines/<{ID}:pipeline_id>")
@blp.response(200, PipelineDetailSchema)
def get_pipeline(pipeline_id: int):  # type: ignore[no-untyped-def]
    """A pipeline: status, progress ``k/N``, and each shard's status and result."""
    return render_pipeline(kiln().pipelines.get(pipeline_id))
