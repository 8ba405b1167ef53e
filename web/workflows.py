"""Workflow runs over HTTP: submit (idempotent with ``Idempotency-Key``), list, read, and
cancel/pause/resume — which, like the dispatcher's, are operations a controller applies."""

from __future__ import annotations

from flask import request
from flask_smorest import Blueprint

from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.common import MUTATING_DOC, idempotency_key, kiln, render_workflow
from kiln.web.errors import ErrorSchema
from kiln.web.pipeline_control import record
from kiln.web.schemas import (
    OperationCreatedSchema,
    WorkflowDefinitionSchema,
    WorkflowDetailSchema,
    WorkflowListQuerySchema,
    WorkflowListSchema,
    WorkflowSchema,
    WorkflowWaitQuerySchema,
)
from kiln.web.waits import wait_slot

blp = Blueprint("workflows", __name__, description="Workflow runs (DAGs of tasks).")
ID = "int(max=9223372036854775807)"


@blp.post("/workflows")
@blp.arguments(WorkflowDefinitionSchema)
@blp.response(201, WorkflowSchema)
@blp.alt_response(200, schema=WorkflowSchema, description="replayed: same Idempotency-Key")
@blp.doc(**MUTATING_DOC)
def submit(data):  # type: ignore[no-untyped-def]
    """Submit a workflow definition. 201 with the new run; 200 with the existing run when
    the ``Idempotency-Key`` was used before; 422 when the definition is invalid."""
    # The shape was checked by the schema; the engine checks the rest (graph, references,
    # handlers) on the body exactly as sent.
    definition = request.get_json()
    workflow_id, created = kiln().submit_with_status(definition, idempotency_key=idempotency_key())
    return _summary(workflow_id), 201 if created else 200


def _summary(workflow_id: int) -> dict:
    run = kiln().run(workflow_id)
    return render_workflow({k: run[k] for k in ("id", "name", "status", "error", "created_at",
                                                "started_at", "finished_at")})  # fmt: skip


@blp.get("/workflows")
@blp.arguments(WorkflowListQuerySchema, location="query")
@blp.response(200, WorkflowListSchema)
def list_workflows(query):  # type: ignore[no-untyped-def]
    """Runs, newest first; filter by status, page with ``before_id``."""
    return {"workflows": [render_workflow(w) for w in kiln().workflows(**query)]}


@blp.get(f"/workflows/<{ID}:workflow_id>")
@blp.arguments(WorkflowWaitQuerySchema, location="query")
@blp.response(200, WorkflowDetailSchema)
@blp.alt_response(429, schema=ErrorSchema, description="too many waits at once; see Retry-After")
def get_workflow(query, workflow_id: int):  # type: ignore[no-untyped-def]
    """A run with every task's state, attempts (history), timings, result or error;
    secrets in params and results are shown as ``***``. With ``wait``, block until the run
    is succeeded, failed or cancelled (or the wait is over); waits share the per-process
    ``KILN_MAX_WAITERS`` cap (429 with ``Retry-After`` when full)."""
    run = kiln().workflow(workflow_id)
    wait_s = query.get("wait", 0.0)
    if wait_s > 0 and run["status"] not in WORKFLOW_TERMINAL:
        with wait_slot():
            run = kiln().wait(workflow_id, wait_s)
    return render_workflow(run)


def _operation(operation: str, workflow_id: int) -> dict:
    kiln().run(workflow_id)  # WorkflowNotFound (404) before an operation is recorded
    return record(
        operation,
        {"workflow_id": workflow_id},
        workflow_id=workflow_id,
        target=f"workflow {workflow_id}",
    )


@blp.post(f"/workflows/<{ID}:workflow_id>/cancel")
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def cancel(workflow_id: int):  # type: ignore[no-untyped-def]
    """Request cancellation (an operation; poll /dispatcher/operation-status/<ic_id>)."""
    return _operation("cancel", workflow_id)


@blp.post(f"/workflows/<{ID}:workflow_id>/pause")
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def pause(workflow_id: int):  # type: ignore[no-untyped-def]
    """Request a pause: nothing new is dispatched, running tasks finish."""
    return _operation("pause", workflow_id)


@blp.post(f"/workflows/<{ID}:workflow_id>/resume")
@blp.response(200, OperationCreatedSchema)
@blp.doc(**MUTATING_DOC)
def resume(workflow_id: int):  # type: ignore[no-untyped-def]
    """Request that a paused run continues."""
    return _operation("resume", workflow_id)
