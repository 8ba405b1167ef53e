"""Submitting a run: write it, and on an idle queue lease its first tasks for the submitter
to send straight to the workers (``Kiln.sender``), skipping the controller's hop.

With nothing else waiting there is nothing for a scheduling policy to order the new tasks
against, so this saves latency without bypassing any policy; on a busy queue the run's tasks
stay ``ready`` and the controllers are woken. On PostgreSQL the idle check, the write and the
lease are one statement (``kiln.store.postgres.INSERT_RUN``), run outside an explicit transaction;
elsewhere they are three in one transaction, with the same guards.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from kiln.core.definitions import WorkflowSpec
from kiln.core.states import TaskStatus
from kiln.store.db import is_postgres, utcnow
from kiln.store.dispatch import (
    DIRECT_DISPATCH_MAX_QUEUED,
    Dispatch,
    mark_queued_txn,
    queue_is_idle_txn,
)
from kiln.store.workflows import direct_names, insert_run_pg, insert_workflow_txn


def submit_run_txn(
    conn: sa.Connection,
    spec: WorkflowSpec,
    *,
    idempotency_key: str | None = None,
    lease_s: float | None = None,
) -> tuple[int, bool, list[Dispatch]]:
    """Store ``spec`` as a new run; return ``(workflow_id, created, dispatches)``.

    ``lease_s``: the caller can send (it has a broker); if the queue is idle, the run's
    direct tasks (``kiln.store.workflows.direct_names``) are leased ``queued`` for ``lease_s``
    seconds and returned, highest priority first, for it to send after commit. A lost send is
    harmless: the controller re-sends when the lease ends."""
    if lease_s is None:
        wf_id, created, _ = insert_workflow_txn(conn, spec, idempotency_key=idempotency_key)
        return wf_id, created, []
    now = utcnow()
    until = now + dt.timedelta(seconds=lease_s)
    names = direct_names(spec)
    if not is_postgres(conn):
        idle = bool(names) and queue_is_idle_txn(conn)
        wf_id, created, ids = insert_workflow_txn(
            conn, spec, idempotency_key=idempotency_key, notify=not idle
        )
        if not (created and idle):
            return wf_id, created, []
        return wf_id, True, mark_queued_txn(conn, ids, now=now, lease_until=until)
    lease = (until, DIRECT_DISPATCH_MAX_QUEUED) if names else None
    wf_id, created, by_name = insert_run_pg(
        conn, spec, idempotency_key=idempotency_key, now=now, notify=True, lease=lease
    )
    if not created:  # the idempotency key was used already
        return wf_id, False, []
    leased = [by_name[n][0] for n in names if by_name[n][1] == TaskStatus.QUEUED]
    return wf_id, True, [Dispatch(i, 1, wf_id) for i in leased]
