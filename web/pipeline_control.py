"""The dispatcher (seed 004): interactive control of running pipelines.

Each POST only checks that its target exists (400 missing field, 404 unknown pipeline) and
records a ``pending`` operation, answering 200 ``{ic_id, message}``; a controller applies it
and marks it ``completed`` or ``failed`` (see :mod:`kiln.store.operations`).
"""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa
from flask_smorest import Blueprint
from kiln.core.handlers import resolve_handler
from kiln.store import operations as ops
from kiln.store import pipelines as pl
from kiln.store.pipeline_contexts import ContextNotFound, context_exists
from kiln.web.common import MUTATING_DOC, idempotency_key, kiln, render_operation
from kiln.web.errors import MissingField
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

blp = Blueprint(
    "dispatcher",
    __name__,
    url_prefix="/dispatcher",
    description="Interactive control of pipelines (stop, resume, delete, clone) as operations.",
)
IC_ID = re.compile(r"^[0-9a-f]{32}$")
POLL_S = 0.1
VERBS = {"stop": "Stop", "resume": "Resume", "delete": "Delete", "clone": "Clone"}


def record(
    operation: str,
    request_data: dict[str, Any],
    *,
    pipeline_id: int | None = None,
    workflow_id: int | None = None,
    target: str,
) -> dict[str, Any]:
    """Insert the pending operation (or find the one with this Idempotency-Key)."""
    row, _ = kiln().txn(
        lambda c: ops.create_operation_txn(
            c,
            operation,
            request_data=request_data,
            pipeline_id=pipeline_id,
            workflow_id=workflow_id,
            idempotency_key=idempotency_key(),
        )
    )
    return {"ic_id": row["ic_id"], "message": f"{VERBS.get(operation, operation)} request "
            f"created for {target}"}  # fmt: skip


def _pipeline_operation(operation: str, data: dict[str, Any]) -> dict[str, Any]:
    pipeline_id = data["pipeline_id"]
    workflow_id = kiln().read(lambda c: pl.pipeline_target(c, pipeline_id))
    return record(
        operation,
        data,
        pipeline_id=pipeline_id,
        workflow_id=workflow_id,
        target=f"pipeline {pipeline_id}",
    )


@blp.get("/health-check")
@blp.response(200, HealthSchema)
def health_check():  # type: ignore[no-untyped-def]
    """Is the dispatcher up and its database reachable?"""
    kiln().read(lambda c: c.execute(sa.text("SELECT 1")))
    return {"status": "ok", "database": "ok"}


@blp.post("/stop-pipeline")
@blp.arguments(PipelineIdSchema)
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def stop_pipeline(data):  # type: ignore[no-untyped-def]
    """Stop a pipeline: the running shard finishes and counts, the rest wait for resume."""
    return _pipeline_operation("stop", data)


@blp.post("/resume-pipeline")
@blp.arguments(PipelineIdSchema)
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def resume_pipeline(data):  # type: ignore[no-untyped-def]
    """Resume a stopped pipeline at its first shard not completed."""
    return _pipeline_operation("resume", data)


@blp.post("/delete-pipeline")
@blp.arguments(PipelineIdSchema)
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def delete_pipeline(data):  # type: ignore[no-untyped-def]
    """Delete a pipeline: queued shards are cancelled, outputs discarded, the row kept."""
    return _pipeline_operation("delete", data)


def check_clone(data: dict[str, Any]) -> tuple[int | None, int]:
    """Validate a clone request now (the controller checks again when applying it):
    returns ``(parent id or None, context id)``."""
    parent_id = data.get("parent_pipeline_id")

    def check(conn):  # type: ignore[no-untyped-def]
        if parent_id is not None:
            merged = pl.merge_overrides(
                pl.config_of(conn, parent_id),
                {k: v for k, v in data.items() if k != "parent_pipeline_id"},
            )
        else:
            for name in ("context_id", "pipeline_name", "model_config"):
                if name not in data:
                    raise MissingField(
                        f"missing required field {name!r} (or give parent_pipeline_id)",
                        field=name,
                    )
            merged = dict(data)
        config = pl.validate_config(merged)
        if not context_exists(conn, merged["context_id"]):
            raise ContextNotFound(
                f"context {merged['context_id']} does not exist", id=merged["context_id"]
            )
        if config.pipeline_type == "python":
            resolve_handler(config.model_config["handler"])
        return merged["context_id"]

    return parent_id, kiln().read(check)


@blp.post("/clone-pipeline")
@blp.arguments(CloneSchema)
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def clone_pipeline(data):  # type: ignore[no-untyped-def]
    """Create a pipeline from a context (seed 004's body) or from a parent pipeline's
    configuration with overrides (``parent_pipeline_id``); it starts at shard 0."""
    parent_id, context_id = check_clone(data)
    target = f"pipeline {parent_id}" if parent_id is not None else f"context {context_id}"
    return record("clone", data, pipeline_id=parent_id, target=target)


@blp.get("/operation-status/<string:ic_id>")
@blp.arguments(OperationStatusQuerySchema, location="query")
@blp.response(200, OperationSchema)
def operation_status(query, ic_id: str):  # type: ignore[no-untyped-def]
    """An operation's state; with ``wait``, block until it is completed or failed (or the
    wait is over)."""
    if not IC_ID.match(ic_id):
        raise ops.OperationNotFound(f"operation {ic_id} does not exist", ic_id=ic_id)
    deadline = time.monotonic() + query.get("wait", 0.0)
    while True:
        row = kiln().read(lambda c: ops.get_operation(c, ic_id))
        if row["status"] not in ops.UNFINISHED or time.monotonic() >= deadline:
            return render_operation(row)
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


@blp.get("/all-operations")
@blp.arguments(OperationListQuerySchema, location="query")
@blp.response(200, OperationListSchema)
def all_operations(query):  # type: ignore[no-untyped-def]
    """Every operation, newest first; filter by status, pipeline, workflow or kind."""
    rows, total = kiln().read(lambda c: ops.list_operations(c, **query))
    return {
        "operations": [render_operation(r) for r in rows],
        "total": total,
        "limit": query["limit"],
        "offset": query["offset"],
    }
