"""Submitting a run: write it, and on an idle queue lease its first tasks for the submitter
to send straight to the workers (``Kiln.sender``), skipping the controller's hop.

With nothing else waiting there is nothing for a scheduling policy to order the new tasks
against, so this saves latency without bypassing any policy; on a busy queue the run's tasks
stay ``ready`` and the controllers are woken. The idle check, the write and the lease are the
store's ``insert_run`` (on PostgreSQL one statement, run outside an explicit transaction).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from kiln.core.clock import aware
from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import IdempotencyKeyReused
from kiln.core.execution import Dispatch
from kiln.core.idempotency import IdempotencyKey, check_replay
from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.db import utcnow
from kiln.store.dialects import statements
from kiln.store.dispatch import DIRECT_DISPATCH_MAX_QUEUED
from kiln.store.schema import workflows
from kiln.store.workflows import direct_names, insert_workflow_txn, run_rows

# What a submitter is answered about its run (POST /workflows).
SUMMARY = (
    workflows.c.id,
    workflows.c.name,
    workflows.c.status,
    workflows.c.error,
    workflows.c.created_at,
    workflows.c.started_at,
    workflows.c.finished_at,
)


def submit_run_txn(
    conn: sa.Connection,
    spec: WorkflowSpec,
    *,
    idempotency_key: IdempotencyKey | None = None,
    lease_s: float | None = None,
    trace_context: str | None = None,
) -> tuple[dict[str, Any], bool, list[Dispatch]]:
    """Store ``spec`` as a new run; return ``(run, created, dispatches)``, ``run`` being the
    row's ``SUMMARY`` columns, known from the write without reading it back (read only for a
    run replayed by its idempotency key).

    ``lease_s``: the caller can send (it has a broker); if the queue is idle, the run's
    direct tasks (``kiln.store.workflows.direct_names``) are leased ``queued`` for ``lease_s``
    seconds and returned, highest priority first, for it to send after commit. A lost send is
    harmless: the controller re-sends when the lease ends. ``trace_context``: the traceparent
    of the span that submitted it, stored with the run (``kiln.app.tracing``)."""
    names = direct_names(spec)
    now = utcnow()
    lease = None
    if lease_s is not None and names:
        lease = (now + dt.timedelta(seconds=lease_s), DIRECT_DISPATCH_MAX_QUEUED)
    wf_id, created, by_name = insert_workflow_txn(
        conn,
        spec,
        idempotency_key=idempotency_key,
        lease=lease,
        now=now,
        trace_context=trace_context,
    )
    if not created:
        row = conn.execute(sa.select(*SUMMARY).where(workflows.c.id == wf_id)).mappings().one()
        # UTC-aware, as for a new run (SQLite reads timestamps back naive)
        return {k: aware(v) if k.endswith("_at") else v for k, v in row.items()}, False, []
    leased = [by_name[n][0] for n in names if by_name[n][1] == TaskStatus.QUEUED]
    # The store writes the run "running" exactly when it leases some of its tasks.
    run = {
        "id": wf_id,
        "name": spec.name,
        "status": WorkflowStatus.RUNNING if leased else WorkflowStatus.PENDING,
        "error": None,
        "created_at": now,
        "started_at": now if leased else None,
        "finished_at": None,
    }
    return run, True, [Dispatch(i, 1, wf_id) for i in leased]


def submit_runs_txn(
    conn: sa.Connection,
    runs: Sequence[tuple[WorkflowSpec, IdempotencyKey | None]],
    *,
    notify: bool = True,
    trace_context: str | None = None,
) -> list[tuple[int, bool]]:
    """Store each ``(spec, idempotency_key)`` as a new run; return ``(workflow_id, created)``
    for each, in order. On PostgreSQL one statement writes them all (``insert_runs``).

    A key used before (or earlier in ``runs``) on the same definition gives that run with
    ``created=False``; on another, :class:`IdempotencyKeyReused` names the run's ``index``,
    and the caller's transaction must roll back the others. Nothing is leased: a batch waits
    for the controllers, whose policy orders it. ``trace_context``: the traceparent of the
    span that submitted the batch, kept by each run (``kiln.app.tracing``)."""
    now = utcnow()
    rows = [run_rows(spec, key, now) for spec, key in runs]
    for run, _, _ in rows:
        run["trace_context"] = trace_context
    ids = statements(conn).insert_runs(conn, rows, now=now, notify=notify)
    replayed = [key.stored for (_, key), wf_id in zip(runs, ids, strict=True) if key and not wf_id]
    existing = {}
    if replayed:
        found = conn.execute(
            sa.select(
                workflows.c.id, workflows.c.idempotency_key, workflows.c.idempotency_fingerprint
            ).where(workflows.c.idempotency_key.in_(replayed))
        )
        existing = {r.idempotency_key: r for r in found}
    out: list[tuple[int, bool]] = []
    for i, wf_id in enumerate(ids):
        if wf_id is not None:
            out.append((wf_id, True))
            continue
        key = runs[i][1]
        assert key is not None  # only a keyed run can be left out
        row = existing[key.stored]
        try:
            check_replay(key, row.idempotency_fingerprint)
        except IdempotencyKeyReused as exc:
            message = f"workflows[{i}]: {exc.message}"
            raise IdempotencyKeyReused(message, index=i, **exc.details) from None
        out.append((row.id, False))
    return out
