"""The dispatcher (seed 004): interactive control of running pipelines.

Each POST only checks that its target exists (400 missing field, 404 unknown pipeline) and
records a ``pending`` operation, answering 200 ``{ic_id, message}``; a controller applies it
and marks it ``completed`` or ``failed`` (see :mod:`kiln.app.operations`).
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from kiln.core.operations import UNFINISHED
from kiln.web.common import MUTATING_DOC, idempotency_key, kiln, render_operation
from kiln.web.errors import ErrorSchema, MissingField
from kiln.web.schemas import (
    CloneSchema,
    HealthSchema,
    OperationCreatedSchema,
    OperationListQuerySchema,
    OperationListSchema,
    OperationSchema,
    OperationStatusQuerySchema,
    PipelineIdSchema,
)
from kiln.web.waits import wait_slot

blp = Blueprint(
    "dispatcher",
    __name__,
    url_prefix="/dispatcher",
    description="Interactive control of pipelines (stop, resume, delete, clone) as operations.",
)
VERBS = {
    "stop": "Stop",
    "resume": "Resume",
    "delete": "Delete",
    "clone": "Clone",
    "pause": "Pause",
    "cancel": "Cancel",
}


def record(
    operation: str,
    request_data: dict[str, Any],
    *,
    pipeline_id: int | None = None,
    workflow_id: int | None = None,
    target: str,
) -> dict[str, Any]:
    """Record the pending operation (or find the one with this Idempotency-Key)."""
    row, _ = kiln().operations.create(
        operation,
        request_data,
        pipeline_id=pipeline_id,
        workflow_id=workflow_id,
        idempotency_key=idempotency_key(),
    )
    return created(row, operation, target)


def created(row: dict[str, Any], operation: str, target: str) -> dict[str, Any]:
    return {"ic_id": row["ic_id"], "message": f"{VERBS.get(operation, operation)} request "
            f"created for {target}"}  # fmt: skip


def _pipeline_operation(operation: str, data: dict[str, Any]) -> dict[str, Any]:
    pipeline_id = data["pipeline_id"]
    row, _ = kiln().operations.on_pipeline(
        operation, pipeline_id, data, idempotency_key=idempotency_key()
    )
    return created(row, operation, f"pipeline {pipeline_id}")


@blp.get("/health-check")
@blp.response(200, HealthSchema)
def health_check():  # type: ignore[no-untyped-def]
    """Is the dispatcher up and its database reachable?"""
    kiln().monitor.ping()
    return {"status": "ok", "database": "ok"}


@blp.post("/stop-pipeline")
@blp.arguments(PipelineIdSchema())
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def stop_pipeline(data):  # type: ignore[no-untyped-def]
    """Stop a pipeline: the running shard finishes and counts, the rest wait for resume."""
    return _pipeline_operation("stop", data)


@blp.post("/resume-pipeline")
@blp.arguments(PipelineIdSchema())
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def resume_pipeline(data):  # type: ignore[no-untyped-def]
    """Resume a stopped pipeline at its first shard not completed."""
    return _pipeline_operation("resume", data)


@blp.post("/delete-pipeline")
@blp.arguments(PipelineIdSchema())
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def delete_pipeline(data):  # type: ignore[no-untyped-def]
    """Delete a pipeline: queued shards are cancelled, outputs discarded, the row kept."""
    return _pipeline_operation("delete", data)


@blp.post("/clone-pipeline")
@blp.arguments(CloneSchema())
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def clone_pipeline(data):  # type: ignore[no-untyped-def]
    """Create a pipeline from a context (seed 004's body) or from a parent pipeline's
    configuration with overrides (``parent_pipeline_id``); it starts at shard 0."""
    parent_id = data.get("parent_pipeline_id")
    if parent_id is None:
        for name in ("context_id", "pipeline_name", "model_config"):
            if name not in data:
                raise MissingField(
                    f"missing required field {name!r} (or give parent_pipeline_id)", field=name
                )
    context_id = kiln().pipelines.check_clone(data)
    target = f"pipeline {parent_id}" if parent_id is not None else f"context {context_id}"
    return record("clone", data, pipeline_id=parent_id, target=target)


@blp.get("/operation-status/<string:ic_id>")
@blp.arguments(OperationStatusQuerySchema(), location="query")
@blp.response(200, OperationSchema)
@blp.alt_response(429, schema=ErrorSchema, description="too many waits at once; see Retry-After")
def operation_status(query, ic_id: str):  # type: ignore[no-untyped-def]
    """An operation's state; with ``wait``, block until it is completed or failed (or the
    wait is over). Only ``KILN_MAX_WAITERS`` waits run at once per web process; another
    one for an unfinished operation is answered 429 with ``Retry-After``."""
    row = kiln().operations.get(ic_id)
    wait_s = query.get("wait", 0.0)
    if wait_s > 0 and row["status"] in UNFINISHED:
        with wait_slot():
            row = kiln().operations.wait(ic_id, wait_s)
    return render_operation(row)


@blp.get("/all-operations")
@blp.arguments(OperationListQuerySchema(), location="query")
@blp.response(200, OperationListSchema)
def all_operations(query):  # type: ignore[no-untyped-def]
    """Every operation, newest first; filter by status, pipeline, workflow or kind."""
    rows, total = kiln().operations.list(**query)
    return {
        "operations": [render_operation(r) for r in rows],
        "total": total,
        "limit": query["limit"],
        "offset": query["offset"],
    }
