"""Operations: interactive-control requests (seed 004's dispatcher), applied by controllers.

The API only checks that the target exists and inserts a ``pending`` row; whether the
operation is legal in the target's current state is decided when a controller applies it.
The lifecycle (pending -> processing -> completed | failed) is in :mod:`kiln.core.operations`.

A controller claims, applies and finishes one operation in **one transaction**
(:func:`process_one_txn`): a controller that crashes half-way rolls everything back and the
row is simply ``pending`` again, so no row can be left stuck in ``processing`` and no
operation is applied twice. (``processing`` is therefore only visible inside that
transaction and in ``events``.) Operations on one workflow are applied in the order they
were created: a row is not claimed while an older one on the same workflow is unfinished.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from kiln.core.errors import KilnError, OperationNotFound
from kiln.core.idempotency import IdempotencyKey, check_replay
from kiln.core.operations import UNFINISHED, OperationStatus
from kiln.core.pipelines import merge_overrides, validate_config
from kiln.store import pipelines as pl
from kiln.store.db import utcnow
from kiln.store.dialects import insert_ignoring, notify_ready
from kiln.store.schema import operations
from kiln.store.workflows import cancel_workflow_txn, pause_workflow_txn, resume_workflow_txn

log = logging.getLogger("kiln.operations")


# --- creating and reading ---------------------------------------------------------------


def create_operation_txn(
    conn: sa.Connection,
    operation: str,
    *,
    request_data: dict[str, Any],
    pipeline_id: int | None = None,
    workflow_id: int | None = None,
    idempotency_key: IdempotencyKey | None = None,
) -> tuple[dict[str, Any], bool]:
    """Insert a ``pending`` operation and wake the controllers; return ``(row, created)``.
    A key already used on the same request returns that operation unchanged with
    ``created=False``; used on a different request, IdempotencyKeyReused is raised."""
    values = {
        "ic_id": uuid.uuid4().hex,
        "operation": operation,
        "status": OperationStatus.PENDING,
        "pipeline_id": pipeline_id,
        "workflow_id": workflow_id,
        "request_data": request_data,
        "idempotency_key": idempotency_key.stored if idempotency_key else None,
        "idempotency_fingerprint": idempotency_key.fingerprint if idempotency_key else None,
        "created_at": utcnow(),
    }
    ic_id = conn.execute(
        insert_ignoring(conn, operations, key=["idempotency_key"])
        .values(values)
        .returning(operations.c.ic_id)
    ).scalar()
    if ic_id is None:  # one guarded insert: of two racing requests, one row
        assert idempotency_key is not None
        existing = dict(
            conn.execute(
                sa.select(operations).where(operations.c.idempotency_key == idempotency_key.stored)
            )
            .mappings()
            .one()
        )
        check_replay(idempotency_key, existing["idempotency_fingerprint"])
        return existing, False
    notify_ready(conn)
    return get_operation(conn, ic_id), True


def get_operation(conn: sa.Connection, ic_id: str) -> dict[str, Any]:
    row = conn.execute(sa.select(operations).where(operations.c.ic_id == ic_id)).mappings().first()
    if row is None:
        raise OperationNotFound(f"operation {ic_id} does not exist", ic_id=ic_id)
    return dict(row)


def list_operations(
    conn: sa.Connection,
    *,
    status: str | None = None,
    pipeline_id: int | None = None,
    workflow_id: int | None = None,
    operation: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Newest first; returns ``(page, total matching)``."""
    conditions = []
    if status:
        conditions.append(operations.c.status == status)
    if pipeline_id is not None:
        conditions.append(operations.c.pipeline_id == pipeline_id)
    if workflow_id is not None:
        conditions.append(operations.c.workflow_id == workflow_id)
    if operation:
        conditions.append(operations.c.operation == operation)
    total = conn.execute(
        sa.select(sa.func.count()).select_from(operations).where(*conditions)
    ).scalar_one()
    rows = conn.execute(
        sa.select(operations)
        .where(*conditions)
        .order_by(operations.c.created_at.desc(), operations.c.ic_id.desc())
        .limit(limit)
        .offset(offset)
    ).mappings()
    return [dict(r) for r in rows], total


# --- applying (controllers) -------------------------------------------------------------


def _clone(conn: sa.Connection, op: Any) -> tuple[str, dict[str, Any]]:
    data = dict(op.request_data)
    parent_id = data.pop("parent_pipeline_id", None)
    if parent_id is not None:
        data = merge_overrides(pl.config_of(conn, parent_id), data)
    config = validate_config(data)
    new_id = pl.create_pipeline_txn(
        conn, config, context_id=data["context_id"], cloned_from=parent_id
    )
    source = f"pipeline {parent_id}" if parent_id is not None else f"context {data['context_id']}"
    return f"pipeline {new_id} cloned from {source}", {"pipeline_id": new_id}


PIPELINE_OPS: dict[str, Callable[[sa.Connection, int], str]] = {
    "stop": pl.stop_pipeline_txn,
    "resume": pl.resume_pipeline_txn,
    "delete": pl.delete_pipeline_txn,
}
WORKFLOW_OPS: dict[str, tuple[Callable[[sa.Connection, int], Any], str]] = {
    "cancel": (cancel_workflow_txn, "cancelled"),
    "pause": (pause_workflow_txn, "paused"),
    "resume": (resume_workflow_txn, "resumed"),
}


def apply_txn(conn: sa.Connection, op: Any) -> tuple[str, dict[str, Any] | None]:
    """Carry out one operation; raise a :class:`KilnError` saying why it is illegal."""
    if op.operation == "clone":
        return _clone(conn, op)
    if op.pipeline_id is not None:
        return PIPELINE_OPS[op.operation](conn, op.pipeline_id), None
    fn, verb = WORKFLOW_OPS[op.operation]
    fn(conn, op.workflow_id)
    backed = (
        conn.execute(
            sa.select(pl.pipelines.c.id).where(pl.pipelines.c.workflow_id == op.workflow_id)
        )
        .scalars()
        .all()
    )
    if backed:  # the workflow backs a pipeline: keep the pipeline's status in step
        pl.sync_statuses_txn(conn, list(backed))
    return f"workflow {op.workflow_id} {verb}", None


def _claim_txn(conn: sa.Connection, controller_id: str) -> Any:
    older = operations.alias("older")
    earlier = sa.or_(
        older.c.created_at < operations.c.created_at,
        sa.and_(
            older.c.created_at == operations.c.created_at,
            older.c.ic_id < operations.c.ic_id,
        ),
    )
    candidate = conn.execute(
        sa.select(operations.c.ic_id)
        .where(
            operations.c.status == OperationStatus.PENDING,
            ~sa.exists().where(
                older.c.workflow_id == operations.c.workflow_id,
                older.c.status.in_(UNFINISHED),
                earlier,
            ),
        )
        .order_by(operations.c.created_at, operations.c.ic_id)
        .limit(1)
        .with_for_update(skip_locked=True, of=operations)
    ).first()
    if candidate is None:
        return None
    return conn.execute(
        operations.update()
        .where(
            operations.c.ic_id == candidate.ic_id,
            operations.c.status == OperationStatus.PENDING,
        )
        .values(status=OperationStatus.PROCESSING, claimed_by=controller_id, claimed_at=utcnow())
        .returning(operations)
    ).first()


def process_one_txn(conn: sa.Connection, controller_id: str) -> dict[str, Any] | None:
    """Claim the oldest claimable pending operation, apply it and finish it, all in the
    caller's transaction. Returns the finished row, or None when nothing was pending."""
    op = _claim_txn(conn, controller_id)
    if op is None:
        return None
    status, error, result = OperationStatus.COMPLETED, None, None
    savepoint = conn.begin_nested()
    try:
        message, result = apply_txn(conn, op)
        savepoint.commit()
    except KilnError as exc:
        savepoint.rollback()
        status, error, message = OperationStatus.FAILED, exc.message, None
    except sa.exc.DBAPIError:
        savepoint.rollback()
        raise  # the database's trouble, not the operation's: retried on the next pass
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the row pending forever
        savepoint.rollback()
        log.exception("operation %s (%s) broke", op.ic_id, op.operation)
        status, error, message = OperationStatus.FAILED, f"internal error: {exc!r}", None
    finished = (
        conn.execute(
            operations.update()
            .where(
                operations.c.ic_id == op.ic_id,
                operations.c.status == OperationStatus.PROCESSING,
                operations.c.claimed_by == controller_id,
            )
            .values(
                status=status,
                error=error,
                result={"message": message, **(result or {})} if message else None,
                processed_at=utcnow(),
            )
            .returning(operations)
        )
        .mappings()
        .first()
    )
    if finished is None:  # cannot happen while we hold the row lock; never apply blindly
        raise RuntimeError(f"operation {op.ic_id} changed hands while being processed")
    log.info("operation %s %s: %s", op.ic_id, status, error or message)
    return dict(finished)
