"""Submitting a run: write it, and on an idle queue lease its first tasks for the submitter
to send straight to the workers (``Kiln.sender``), skipping the controller's hop.

With nothing else waiting there is nothing for a scheduling policy to order the new tasks
against, so this saves latency without bypassing any policy; on a busy queue the run's tasks
stay ``ready`` and the controllers are woken. The idle check, the write and the lease are the
store's ``insert_run`` (on PostgreSQL one statement, run outside an explicit transaction).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from kiln.core.definitions import WorkflowSpec
from kiln.core.execution import Dispatch
from kiln.core.idempotency import IdempotencyKey
from kiln.core.states import TaskStatus
from kiln.store.db import utcnow
from kiln.store.dispatch import DIRECT_DISPATCH_MAX_QUEUED
from kiln.store.workflows import direct_names, insert_workflow_txn


def submit_run_txn(
    conn: sa.Connection,
    spec: WorkflowSpec,
    *,
    idempotency_key: IdempotencyKey | None = None,
    lease_s: float | None = None,
) -> tuple[int, bool, list[Dispatch]]:
    """Store ``spec`` as a new run; return ``(workflow_id, created, dispatches)``.

    ``lease_s``: the caller can send (it has a broker); if the queue is idle, the run's
    direct tasks (``kiln.store.workflows.direct_names``) are leased ``queued`` for ``lease_s``
    seconds and returned, highest priority first, for it to send after commit. A lost send is
    harmless: the controller re-sends when the lease ends."""
    names = direct_names(spec)
    lease = None
    if lease_s is not None and names:
        lease = (utcnow() + dt.timedelta(seconds=lease_s), DIRECT_DISPATCH_MAX_QUEUED)
    wf_id, created, by_name = insert_workflow_txn(
        conn, spec, idempotency_key=idempotency_key, lease=lease
    )
    if not created or lease is None:
        return wf_id, created, []
    leased = [by_name[n][0] for n in names if by_name[n][1] == TaskStatus.QUEUED]
    return wf_id, True, [Dispatch(i, 1, wf_id) for i in leased]
