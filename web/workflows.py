"""Workflow runs over HTTP: submit (idempotent with ``Idempotency-Key``), list, read, and
cancel/pause/resume — which, like the dispatcher's, are operations a controller applies."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_smorest import Blueprint

from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import KilnError
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.web.common import MUTATING_DOC, SECURITY, idempotency_key, kiln, render_workflow
from kiln.web.errors import ErrorSchema
from kiln.web.pipeline_control import record
from kiln.web.schemas import (
    TASKS_PAGE,
    OperationCreatedSchema,
    WorkflowBatchEnvelopeSchema,
    WorkflowBatchResultSchema,
    WorkflowBatchSchema,
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
# Argument schemas as instances, built once: given a class, webargs builds a new schema (and
# its nested ones) on every request, a large part of a submit's CPU.
DEFINITION = WorkflowDefinitionSchema()
BATCH = WorkflowBatchSchema()
BATCH_ENVELOPE = WorkflowBatchEnvelopeSchema()
LIST_QUERY = WorkflowListQuerySchema()
WAIT_QUERY = WorkflowWaitQuerySchema()


def documents_body(schema: Any):  # type: ignore[no-untyped-def]
    """``@blp.arguments(schema)`` for the OpenAPI document only: the view reads the body
    itself. flask-smorest documents the body on its own wrapper, which webargs' parsing
    wrapper wraps (``__wrapped__``); the view gets that one, without the parsing."""

    def decorator(view):  # type: ignore[no-untyped-def]
        return blp.arguments(schema)(view).__wrapped__

    return decorator


@blp.post("/workflows")
@documents_body(DEFINITION)
@blp.response(201, WorkflowSchema)
@blp.alt_response(200, schema=WorkflowSchema, description="replayed: same Idempotency-Key")
@blp.doc(**MUTATING_DOC)
def submit():  # type: ignore[no-untyped-def]
    """Submit a workflow definition. 201 with the new run; 200 with the existing run when
    the ``Idempotency-Key`` was used before; 422 when the definition is invalid."""
    spec = checked_definition(request.get_json(silent=True))
    # The summary comes from the write itself: no query after the insert.
    run, created = kiln().submit_run(spec, idempotency_key=idempotency_key())
    return render_workflow(run), 201 if created else 200


def checked_definition(definition: Any) -> WorkflowSpec:
    """The spec of a submitted body, validated once: by the engine, which builds the spec
    the run needs anyway (its handlers are checked when it is submitted).

    The answers stay those of validating with the schema first and the engine after: a
    body the schema refuses gets the schema's error (``missing_field``, ``validation_error``,
    ``invalid_json``), any other the engine's. The engine refuses everything the schema
    refuses (tests/unit/test_definition_schema.py) but an explicit ``null`` in an optional
    task field, which it reads as "not given": so the schema runs when the engine refuses a
    body, or when a body holds a null, to answer as it did."""
    try:
        spec = kiln().spec_of(definition, check_handlers=False)
    except Exception:
        schema_errors(DEFINITION)
        raise
    if has_null(definition):
        schema_errors(DEFINITION)
    return spec


def schema_errors(schema: Any) -> None:
    """Raise the error ``@blp.arguments(schema)`` raises for this request's JSON body (none
    when the schema accepts it)."""
    blp.ARGUMENTS_PARSER.parse(schema, location="json")


def has_null(definition: dict[str, Any]) -> bool:
    """A null among the fields of the definition or of its tasks (not inside params)."""
    tasks = definition.get("tasks")
    return None in definition.values() or (
        isinstance(tasks, list) and any(isinstance(t, dict) and None in t.values() for t in tasks)
    )


@blp.post("/workflows/batch")
@documents_body(BATCH)
@blp.response(201, WorkflowBatchResultSchema)
@blp.alt_response(200, schema=WorkflowBatchResultSchema, description="every run replayed by key")
@blp.doc(security=SECURITY)
def submit_batch():  # type: ignore[no-untyped-def]
    """Submit up to 1,000 workflow definitions in one transaction, each with its own
    optional ``idempotency_key``: all are stored or none. 201 with each run's id in order
    (``created`` false for one replayed by its key); 422 naming the index of the first
    invalid definition (``details.index``), with nothing stored."""
    # Each definition is validated once, by the engine, as POST /workflows does (see
    # checked_definition): the schema checks the envelope only, and the whole body when the
    # envelope or the engine refuses something or a definition holds a null, so that every
    # answer is the one validating with the full schema first gave.
    body = request.get_json(silent=True)
    if (
        not isinstance(body, dict)
        or BATCH_ENVELOPE.validate(body)
        or any(has_null(item["definition"]) for item in body["workflows"])
    ):
        schema_errors(BATCH)
    items = body["workflows"]
    try:
        runs = kiln().submit_many_with_status(
            [item["definition"] for item in items],
            idempotency_keys=[item.get("idempotency_key") for item in items],
        )
    except KilnError:
        schema_errors(BATCH)
        raise
    body = {"workflows": [{"id": wf_id, "created": created} for wf_id, created in runs]}
    return body, 201 if any(created for _, created in runs) else 200


@blp.get("/workflows")
@blp.arguments(LIST_QUERY, location="query")
@blp.response(200, WorkflowListSchema)
def list_workflows(query):  # type: ignore[no-untyped-def]
    """Runs, newest first; filter by status, page with ``before_id``."""
    return {"workflows": [render_workflow(w) for w in kiln().workflows(**query)]}


@blp.get(f"/workflows/<{ID}:workflow_id>")
@blp.arguments(WAIT_QUERY, location="query")
@blp.response(200, WorkflowDetailSchema)
@blp.alt_response(429, schema=ErrorSchema, description="too many waits at once; see Retry-After")
def get_workflow(query, workflow_id: int):  # type: ignore[no-untyped-def]
    """A run with every task's state, attempts (history), timings, result or error;
    secrets in params and results are shown as ``***``. With ``wait``, block until the run
    is succeeded, failed or cancelled (or the wait is over); waits share the per-process
    ``KILN_MAX_WAITERS`` cap (429 with ``Retry-After`` when full). Tasks come in pages of
    ``tasks_limit`` (default 1000) in id order; ``tasks_next_after`` is the ``tasks_after``
    of the next page, ``tasks_total`` counts them all."""
    page = {"tasks_limit": query.get("tasks_limit", TASKS_PAGE),
            "tasks_after": query.get("tasks_after")}  # fmt: skip
    run = kiln().workflow(workflow_id, **page)
    wait_s = query.get("wait", 0.0)
    if wait_s > 0 and run["status"] not in WORKFLOW_TERMINAL:
        with wait_slot():
            run = kiln().wait(workflow_id, wait_s, **page)
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
