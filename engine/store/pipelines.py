"""Pipelines: one configuration run over every shard of a context, in order, one at a time.

A pipeline is backed by a workflow run whose tasks are its shards, chained (shard *i*
depends on shard *i-1*), each running the built-in handler
:data:`~kiln.core.pipelines.SHARD_HANDLER` with params ``{pipeline_id, shard_index}``. So
everything the engine guarantees for tasks holds for shards: at most one shard of a pipeline
runs at a time, a shard's success is recorded (and the next shard readied) in one
transaction, and a pipeline's progress is *derived* from its workflow's tasks when read:
``shards_completed`` is always the number of succeeded shard tasks. The lifecycle and the
configuration rules are in :mod:`kiln.core.pipelines`.

Functions ending in ``_txn`` never commit; their caller owns the transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kiln.core.errors import (
    ContextNotFound,
    IllegalTransition,
    InvalidDefinition,
    PipelineNotFound,
)
from kiln.core.pipelines import (
    FROM_WORKFLOW,
    PipelineConfig,
    PipelineStatus,
    derive_status,
    shard_index_of,
    shard_workflow,
)
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.store.db import utcnow
from kiln.store.dialects import json_without
from kiln.store.pipeline_contexts import context_exists, shard_rows
from kiln.store.schema import contexts, pipelines, tasks, workflows
from kiln.store.workflows import (
    cancel_workflow_txn,
    pause_workflow_txn,
    resume_workflow_txn,
    submit_workflow_txn,
)


def _derived_status_sql(workflow_status: Any) -> Any:
    return sa.case(
        (pipelines.c.status == PipelineStatus.DELETED.value, PipelineStatus.DELETED.value),
        *((workflow_status == w.value, p.value) for w, p in FROM_WORKFLOW.items()),
        else_=pipelines.c.status,
    )


# --- creation -------------------------------------------------------------------------


def create_pipeline_txn(
    conn: sa.Connection,
    config: PipelineConfig,
    *,
    context_id: int,
    cloned_from: int | None = None,
) -> int:
    """Write the pipeline and its backing workflow (one chained task per shard)."""
    if not context_exists(conn, context_id):
        raise ContextNotFound(f"context {context_id} does not exist", id=context_id)
    num_shards = conn.execute(
        sa.select(contexts.c.num_shards).where(contexts.c.id == context_id)
    ).scalar_one()
    pipeline_id = conn.execute(
        pipelines.insert()
        .values(
            name=config.name,
            context_id=context_id,
            pipeline_type=config.pipeline_type,
            status=PipelineStatus.NEW,
            model_config=config.model_config,
            sampling_params=config.sampling_params,
            client_config=config.client_config,
            rpm_limit=config.rpm_limit,
            tpm_limit=config.tpm_limit,
            cloned_from=cloned_from,
            created_at=utcnow(),
        )
        .returning(pipelines.c.id)
    ).scalar_one()
    workflow_id, _ = submit_workflow_txn(conn, shard_workflow(pipeline_id, config.name, num_shards))
    conn.execute(
        pipelines.update().where(pipelines.c.id == pipeline_id).values(workflow_id=workflow_id)
    )
    return pipeline_id


# --- reading --------------------------------------------------------------------------


def _progress_columns() -> list[Any]:
    t = tasks.alias("t")
    succeeded = sa.and_(t.c.workflow_id == pipelines.c.workflow_id, t.c.status == "succeeded")
    return [
        sa.select(sa.func.count()).where(succeeded).scalar_subquery().label("shards_completed"),
        sa.select(sa.func.coalesce(sa.func.sum(t.c.result["samples"].as_integer()), 0))
        .where(succeeded)
        .scalar_subquery()
        .label("total_samples_processed"),
    ]


def _select_pipelines() -> sa.Select:
    return (
        sa.select(
            pipelines,
            workflows.c.status.label("workflow_status"),
            contexts.c.num_shards,
            _derived_status_sql(workflows.c.status).label("derived_status"),
            *_progress_columns(),
        )
        .select_from(pipelines)
        .join(contexts, contexts.c.id == pipelines.c.context_id)
        .outerjoin(workflows, workflows.c.id == pipelines.c.workflow_id)
    )


def _shape(row: Any) -> dict[str, Any]:
    p = dict(row)
    p["status"] = p.pop("derived_status")
    done, total = p["shards_completed"], p["num_shards"]
    p["progress"] = f"{done}/{total}"
    p["current_shard_id"] = done if done < total else None
    p["total_samples_processed"] = int(p["total_samples_processed"] or 0)
    return p


def get_pipeline(conn: sa.Connection, pipeline_id: int, *, shards: bool = True) -> dict[str, Any]:
    """The pipeline with derived status and progress, and (``shards``) one entry per shard:
    its task's status, attempts, timings, result and error. Secrets are still in
    ``client_config``: callers that show it to people use :func:`kiln.core.redaction.redact`."""
    row = conn.execute(_select_pipelines().where(pipelines.c.id == pipeline_id)).mappings().first()
    if row is None:
        raise PipelineNotFound(f"pipeline {pipeline_id} does not exist", id=pipeline_id)
    p = _shape(row)
    if shards:
        rows = conn.execute(
            sa.select(
                tasks.c.name,
                tasks.c.status,
                tasks.c.attempts,
                tasks.c.started_at,
                tasks.c.finished_at,
                tasks.c.result,
                tasks.c.error,
                tasks.c.progress,
            )
            .where(tasks.c.workflow_id == p["workflow_id"])
            .order_by(tasks.c.name)
        ).mappings()
        p["shards"] = [{"shard_index": shard_index_of(r["name"]), **dict(r)} for r in rows]
    return p


def list_pipelines(
    conn: sa.Connection,
    *,
    status: str | None = None,
    context_id: int | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    q = _select_pipelines().order_by(pipelines.c.id.desc()).limit(limit)
    if status:
        q = q.where(_derived_status_sql(workflows.c.status) == status)
    if context_id is not None:
        q = q.where(pipelines.c.context_id == context_id)
    if before_id is not None:
        q = q.where(pipelines.c.id < before_id)
    return [_shape(r) for r in conn.execute(q).mappings()]


def pipeline_target(conn: sa.Connection, pipeline_id: int) -> int | None:
    """The backing workflow id of an existing pipeline; raises PipelineNotFound."""
    row = conn.execute(
        sa.select(pipelines.c.workflow_id).where(pipelines.c.id == pipeline_id)
    ).first()
    if row is None:
        raise PipelineNotFound(f"pipeline {pipeline_id} does not exist", id=pipeline_id)
    return row.workflow_id


def config_of(conn: sa.Connection, pipeline_id: int) -> dict[str, Any]:
    """The stored configuration of a pipeline, in the request's field names (with secrets)."""
    row = conn.execute(sa.select(pipelines).where(pipelines.c.id == pipeline_id)).mappings().first()
    if row is None:
        raise PipelineNotFound(f"pipeline {pipeline_id} does not exist", id=pipeline_id)
    return {
        "pipeline_name": row["name"],
        "pipeline_type": row["pipeline_type"],
        "model_config": row["model_config"],
        "sampling_params": row["sampling_params"],
        "client_config": row["client_config"],
        "rpm_limit": row["rpm_limit"],
        "tpm_limit": row["tpm_limit"],
        "context_id": row["context_id"],
    }


# --- the operations' effects (called by kiln.store.operations) ----------------------------


def _lock(conn: sa.Connection, pipeline_id: int) -> tuple[Any, PipelineStatus]:
    """Lock the pipeline and its workflow; return the row and its current status."""
    row = conn.execute(
        sa.select(pipelines.c.id, pipelines.c.status, pipelines.c.workflow_id)
        .where(pipelines.c.id == pipeline_id)
        .with_for_update()
    ).first()
    if row is None:
        raise PipelineNotFound(f"pipeline {pipeline_id} does not exist", id=pipeline_id)
    wf_status = conn.execute(
        sa.select(workflows.c.status).where(workflows.c.id == row.workflow_id).with_for_update()
    ).scalar()
    return row, derive_status(row.status, wf_status)


def _refuse(pipeline_id: int, operation: str, status: PipelineStatus, needs: str) -> None:
    raise IllegalTransition(
        f"cannot {operation} pipeline {pipeline_id}: it is {status.value}; "
        f"{operation} needs a pipeline that is {needs}",
        id=pipeline_id,
        status=status.value,
    )


def stop_pipeline_txn(conn: sa.Connection, pipeline_id: int) -> str:
    row, status = _lock(conn, pipeline_id)
    if status not in (PipelineStatus.NEW, PipelineStatus.ONGOING):
        _refuse(pipeline_id, "stop", status, "new or ongoing")
    pause_workflow_txn(conn, row.workflow_id)
    sync_statuses_txn(conn, [pipeline_id])
    return f"pipeline {pipeline_id} stopped; a shard already running finishes and counts"


def resume_pipeline_txn(conn: sa.Connection, pipeline_id: int) -> str:
    row, status = _lock(conn, pipeline_id)
    if status != PipelineStatus.STOPPED:
        _refuse(pipeline_id, "resume", status, "stopped")
    resume_workflow_txn(conn, row.workflow_id)
    sync_statuses_txn(conn, [pipeline_id])
    done = conn.execute(
        sa.select(sa.func.count()).where(
            tasks.c.workflow_id == row.workflow_id, tasks.c.status == "succeeded"
        )
    ).scalar_one()
    return f"pipeline {pipeline_id} resumed at shard {done}"


def delete_pipeline_txn(conn: sa.Connection, pipeline_id: int) -> str:
    row, status = _lock(conn, pipeline_id)
    if status in (PipelineStatus.COMPLETED, PipelineStatus.DELETED):
        _refuse(pipeline_id, "delete", status, "new, ongoing, stopped or failed")
    wf_status = conn.execute(
        sa.select(workflows.c.status).where(workflows.c.id == row.workflow_id)
    ).scalar()
    if wf_status not in WORKFLOW_TERMINAL:
        cancel_workflow_txn(conn, row.workflow_id)
    conn.execute(
        pipelines.update()
        .where(pipelines.c.id == pipeline_id, pipelines.c.status != PipelineStatus.DELETED)
        .values(status=PipelineStatus.DELETED, deleted_at=utcnow())
    )
    # Discard the shards' outputs but keep their counts, so progress still adds up.
    without_outputs = json_without(conn, "result", "outputs")
    conn.execute(
        tasks.update()
        .where(tasks.c.workflow_id == row.workflow_id, tasks.c.result.is_not(None))
        .values(result=without_outputs)
    )
    return f"pipeline {pipeline_id} deleted"


def sync_statuses_txn(conn: sa.Connection, pipeline_ids: list[int] | None = None) -> int:
    """Write each active pipeline's status from its workflow's (so that ``events`` records
    pipeline transitions). Reads never depend on this: they derive the status."""
    wf_status = (
        sa.select(workflows.c.status)
        .where(workflows.c.id == pipelines.c.workflow_id)
        .scalar_subquery()
    )
    derived = _derived_status_sql(wf_status)
    q = pipelines.update().where(
        pipelines.c.status.in_(
            [PipelineStatus.NEW, PipelineStatus.ONGOING, PipelineStatus.STOPPED]
        ),
        pipelines.c.workflow_id.is_not(None),
        pipelines.c.status.is_distinct_from(derived),
    )
    if pipeline_ids is not None:
        q = q.where(pipelines.c.id.in_(pipeline_ids))
    return conn.execute(q.values(status=derived)).rowcount


# --- what a shard handler needs ---------------------------------------------------------


def load_shard_job(conn: sa.Connection, pipeline_id: int, shard_index: int) -> dict[str, Any]:
    """Everything a worker needs to run one shard: the pipeline's full configuration
    (secrets included), the context's config and source, and the shard's inline rows."""
    config = config_of(conn, pipeline_id)
    ctx = (
        conn.execute(
            sa.select(contexts.c.config, contexts.c.source, contexts.c.num_shards).where(
                contexts.c.id == config["context_id"]
            )
        )
        .mappings()
        .one()
    )
    if not 0 <= shard_index < ctx["num_shards"]:
        raise InvalidDefinition(
            f"pipeline {pipeline_id} has no shard {shard_index}", shard_index=shard_index
        )
    return {
        **config,
        "pipeline_id": pipeline_id,
        "shard_index": shard_index,
        "num_shards": ctx["num_shards"],
        "context_config": ctx["config"],
        "source": ctx["source"],
        "rows": shard_rows(conn, config["context_id"], shard_index),
    }
