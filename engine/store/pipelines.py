"""Pipelines: one configuration run over every shard of a context, in order, one at a time.

A pipeline is backed by a workflow run whose tasks are its shards, chained (shard *i*
depends on shard *i-1*), each running the ``pipeline.shard`` handler
(:mod:`kiln.workers.pipeline_shards`) with params ``{pipeline_id, shard_index}``. So everything
the engine guarantees for tasks holds for shards: at most one shard of a pipeline runs at a
time, a shard's success is recorded (and the next shard readied) in one transaction, and a
pipeline's progress is *derived* from its workflow's tasks when read:
``shards_completed`` is always the number of succeeded shard tasks.

Functions ending in ``_txn`` never commit; their caller owns the transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeGuard

import sqlalchemy as sa
from kiln.core.definitions import parse_definition
from kiln.core.errors import IllegalTransition, InvalidDefinition, NotFound
from kiln.core.states import WORKFLOW_TERMINAL, WorkflowStatus
from kiln.store.db import is_postgres, utcnow
from kiln.store.pipeline_contexts import ContextNotFound, context_exists
from kiln.store.schema import PIPELINE_TYPES, contexts, pipelines, tasks, workflows
from kiln.store.workflows import (
    cancel_workflow_txn,
    pause_workflow_txn,
    resume_workflow_txn,
    submit_workflow_txn,
)

SHARD_HANDLER = "kiln.workers.pipeline_shards:run_shard"
SHARD_MAX_ATTEMPTS = 3
SECRET_MARKERS = ("key", "secret", "token", "password", "authorization")
REDACTED = "***"


class PipelineStatus(enum.StrEnum):
    """Lifecycle of a pipeline; it follows the backing workflow, except ``deleted``.

    =========  ==============================================  ===========================
    status     backing workflow                                reached by
    =========  ==============================================  ===========================
    new        pending (no shard dispatched yet)               creation, clone
    ongoing    running                                         first shard dispatched,
                                                               resume
    stopped    paused (the running shard finishes and counts)  stop
    completed  succeeded (every shard succeeded)               last shard
    failed     failed (a shard failed all its attempts) or     shard failure,
               cancelled through the workflow API              workflow cancel
    deleted    cancelled, results discarded                    delete
    =========  ==============================================  ===========================

    Allowed moves are :data:`PIPELINE_TRANSITIONS`; the operations check them:
    stop needs new|ongoing, resume needs stopped, delete anything but completed|deleted.
    """

    NEW = "new"
    ONGOING = "ongoing"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


PIPELINE_TRANSITIONS: dict[PipelineStatus, frozenset[PipelineStatus]] = {
    PipelineStatus.NEW: frozenset(
        {
            PipelineStatus.ONGOING,
            PipelineStatus.STOPPED,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.ONGOING: frozenset(
        {
            PipelineStatus.STOPPED,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.STOPPED: frozenset(
        {
            PipelineStatus.ONGOING,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.FAILED: frozenset({PipelineStatus.DELETED}),
    PipelineStatus.COMPLETED: frozenset(),
    PipelineStatus.DELETED: frozenset(),
}

FROM_WORKFLOW = {
    WorkflowStatus.PENDING: PipelineStatus.NEW,
    WorkflowStatus.RUNNING: PipelineStatus.ONGOING,
    WorkflowStatus.PAUSED: PipelineStatus.STOPPED,
    WorkflowStatus.SUCCEEDED: PipelineStatus.COMPLETED,
    WorkflowStatus.FAILED: PipelineStatus.FAILED,
    WorkflowStatus.CANCELLED: PipelineStatus.FAILED,
}


class PipelineNotFound(NotFound):
    """No pipeline with this id."""


def derive_status(stored: str, workflow_status: str | None) -> PipelineStatus:
    """The pipeline's status from its stored one and its backing workflow's."""
    if stored == PipelineStatus.DELETED or workflow_status is None:
        return PipelineStatus(stored)
    return FROM_WORKFLOW[WorkflowStatus(workflow_status)]


def _derived_status_sql(workflow_status: Any) -> Any:
    return sa.case(
        (pipelines.c.status == PipelineStatus.DELETED.value, PipelineStatus.DELETED.value),
        *((workflow_status == w.value, p.value) for w, p in FROM_WORKFLOW.items()),
        else_=pipelines.c.status,
    )


# --- configuration (pure) ------------------------------------------------------------

CONFIG_FIELDS = (
    "pipeline_name", "pipeline_type", "model_config", "sampling_params", "client_config",
    "rpm_limit", "tpm_limit",
)  # fmt: skip


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    pipeline_type: str
    model_config: dict[str, Any]
    sampling_params: dict[str, Any] | None = None
    client_config: dict[str, Any] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


def infer_type(data: dict[str, Any]) -> str:
    """Seed 004's clone example has no ``pipeline_type``: openai when a ``client_config`` is
    given, python when ``model_config`` names a ``handler``, vllm otherwise."""
    if data.get("client_config"):
        return "openai"
    if isinstance(data.get("model_config"), dict) and "handler" in data["model_config"]:
        return "python"
    return "vllm"


def _non_empty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def validate_config(data: dict[str, Any]) -> PipelineConfig:
    """Check a pipeline configuration (the API's and the controller's one rule set); raise
    :class:`InvalidDefinition` naming the field."""
    name = data.get("pipeline_name")
    if not _non_empty_str(name):
        raise InvalidDefinition("pipeline_name must be a non-empty string", field="pipeline_name")
    ptype = data.get("pipeline_type") or infer_type(data)
    if ptype not in PIPELINE_TYPES:
        raise InvalidDefinition(
            f"pipeline_type must be one of {', '.join(PIPELINE_TYPES)}", field="pipeline_type"
        )
    model_config = data.get("model_config")
    if not isinstance(model_config, dict):
        raise InvalidDefinition("model_config must be an object", field="model_config")
    for key in ("sampling_params", "client_config"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise InvalidDefinition(f"{key} must be an object", field=key)
    for key in ("rpm_limit", "tpm_limit"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidDefinition(f"{key} must be a positive integer", field=key)
    if ptype == "python" and not _non_empty_str(model_config.get("handler")):
        raise InvalidDefinition(
            "a python pipeline needs model_config.handler (a registered handler name or "
            "'package.module:function')",
            field="model_config.handler",
        )
    if ptype in ("vllm", "openai") and not _non_empty_str(model_config.get("model")):
        raise InvalidDefinition(
            f"{'an' if ptype == 'openai' else 'a'} {ptype} pipeline needs model_config.model",
            field="model_config.model",
        )
    if ptype == "openai" and not _non_empty_str((data.get("client_config") or {}).get("base_url")):
        raise InvalidDefinition(
            "an openai pipeline needs client_config.base_url", field="client_config.base_url"
        )
    return PipelineConfig(
        name=name.strip(),
        pipeline_type=ptype,
        model_config=model_config,
        sampling_params=data.get("sampling_params"),
        client_config=data.get("client_config"),
        rpm_limit=data.get("rpm_limit"),
        tpm_limit=data.get("tpm_limit"),
    )


def merge_overrides(parent: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A clone's configuration: the parent's, with each given field replaced; the three
    config objects are merged one level deep (so ``{"model_config": {"temperature": 0}}``
    keeps the parent's model)."""
    out = {k: parent.get(k) for k in CONFIG_FIELDS}
    out["context_id"] = parent.get("context_id")
    for key, value in overrides.items():
        if key in ("model_config", "sampling_params", "client_config") and isinstance(value, dict):
            out[key] = {**(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def redact(value: Any) -> Any:
    """``value`` with every secret-looking key's value replaced by ``***``, at any depth."""
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if any(m in str(k).lower() for m in SECRET_MARKERS) and v is not None
                else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


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
    spec = parse_definition(
        {
            "name": f"pipeline {pipeline_id}: {config.name}",
            "on_error": "stop",
            "tasks": [
                {
                    "name": shard_task_name(i),
                    "handler": SHARD_HANDLER,
                    "params": {"pipeline_id": pipeline_id, "shard_index": i},
                    "depends_on": [shard_task_name(i - 1)] if i else [],
                    "max_attempts": SHARD_MAX_ATTEMPTS,
                }
                for i in range(num_shards)
            ],
        }
    )
    workflow_id, _ = submit_workflow_txn(conn, spec)
    conn.execute(
        pipelines.update().where(pipelines.c.id == pipeline_id).values(workflow_id=workflow_id)
    )
    return pipeline_id


def shard_task_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_index_of(task_name: str) -> int:
    return int(task_name.rsplit("-", 1)[1])


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
    ``client_config``: callers that show it to people use :func:`redact`."""
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
    without_outputs = (
        sa.text("result - 'outputs'")
        if is_postgres(conn)
        else sa.text("json_remove(result, '$.outputs')")
    )
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
    from kiln.store.pipeline_contexts import shard_rows

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
