"""Lease upkeep and recovery: what keeps a task honest about who is working on it.

Workers extend the leases of the tasks they hold and report progress; the controller finds
leases that ran out and puts that work back on track. Like ``kiln.store.tasks``, every change is a
guarded statement, and functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from kiln.core.execution import ClaimedTask, Dispatch, Outcome, Recovery
from kiln.core.states import TaskStatus
from kiln.store.db import utcnow
from kiln.store.dialects import statements
from kiln.store.dispatch import MAX_DISPATCHES
from kiln.store.processes import last_worker_heartbeat
from kiln.store.schema import tasks
from kiln.store.tasks import fail_attempt_txn, propagate_failure_txn
from kiln.store.workflows import settle_workflows_txn


def heartbeat_leases_txn(
    conn: sa.Connection, worker_id: str, held: Sequence[tuple[int, int]], *, lease_s: float
) -> list[tuple[int, int]]:
    """Extend the leases of the ``(task_id, attempt)`` pairs this worker is still working on;
    return the pairs no longer running under that attempt here (cancelled, finished, or
    recovered and re-leased), whose handlers should stop.

    Only what the worker names is extended: a task whose batch was abandoned (say, the
    database went away while recording it) lets its lease run out and is recovered, even
    though its worker process is alive and heartbeating."""
    if not held:
        return []
    kept = conn.execute(
        tasks.update()
        .where(_held_here(worker_id, held))
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
        .returning(tasks.c.id, tasks.c.attempts)
    ).all()
    return _lost(held, kept)


def lost_leases_txn(
    conn: sa.Connection, worker_id: str, held: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The pairs of ``held`` no longer running under that attempt here: a read, cheap enough
    for a worker to ask each second so a cancel reaches running handlers quickly."""
    if not held:
        return []
    kept = conn.execute(
        sa.select(tasks.c.id, tasks.c.attempts).where(_held_here(worker_id, held))
    ).all()
    return _lost(held, kept)


def _held_here(worker_id: str, held: Sequence[tuple[int, int]]) -> sa.ColumnElement[bool]:
    return sa.and_(
        sa.tuple_(tasks.c.id, tasks.c.attempts).in_(list(held)),
        tasks.c.lease_owner == worker_id,
        tasks.c.status == TaskStatus.RUNNING,
    )


def _lost(held: Sequence[tuple[int, int]], kept: Sequence[sa.Row]) -> list[tuple[int, int]]:
    still = {(r[0], r[1]) for r in kept}
    return [pair for pair in held if pair not in still]


def report_progress_txn(
    conn: sa.Connection,
    task_id: int,
    attempt: int,
    fraction: float,
    message: str | None,
    *,
    lease_s: float,
) -> bool:
    """Store progress of a running attempt (and extend its lease: it is visibly alive)."""
    return (
        conn.execute(
            tasks.update()
            .where(
                tasks.c.id == task_id,
                tasks.c.attempts == attempt,
                tasks.c.status == TaskStatus.RUNNING,
            )
            .values(
                progress=max(0.0, min(1.0, float(fraction))),
                progress_message=message,
                lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s),
            )
        ).rowcount
        == 1
    )


def recover_txn(
    conn: sa.Connection,
    *,
    lease_s: float,
    dispatch_timeout_s: float,
    retry_base_s: float,
    retry_max_s: float,
    limit: int = 500,
) -> Recovery:
    """Find work whose lease expired and put it back on track.

    * running, lease expired (the worker died or hung): the attempt is recorded as ``lost``
      and the task retries, or fails once ``max_attempts`` claims have been made;
    * queued, lease expired (the message was lost): the same attempt is re-sent, unless it
      has been sent ``MAX_DISPATCHES`` times already, then it is quarantined as failed. Only
      once a worker has heartbeated since the last send, though: while no worker is alive the
      task keeps waiting, neither re-sent nor counted, so an outage quarantines nothing and
      the first worker back gets it re-sent.
    """
    now = utcnow()
    out = Recovery()
    # The lease of a send ends dispatch_timeout_s after it, so "sent before a worker's last
    # heartbeat" is this bound on the lease.
    seen = last_worker_heartbeat(conn)
    queued_due = (
        sa.and_(
            tasks.c.status == TaskStatus.QUEUED,
            tasks.c.lease_expires_at < seen + dt.timedelta(seconds=dispatch_timeout_s),
        )
        if seen is not None
        else sa.false()
    )
    expired = conn.execute(
        sa.select(
            tasks.c.id,
            tasks.c.status,
            tasks.c.attempts,
            tasks.c.max_attempts,
            tasks.c.resumes,
            tasks.c.workflow_id,
            tasks.c.name,
            tasks.c.dispatch_count,
            tasks.c.lease_owner,
            tasks.c.started_at,
            tasks.c.queue,
        )
        .where(
            sa.or_(tasks.c.status == TaskStatus.RUNNING, queued_due),
            tasks.c.lease_expires_at < now,
        )
        .order_by(tasks.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if expired:
        statements(conn).note_audit(conn, actor="recovery", reason="lease expired")
    touched: set[int] = set()
    for row in expired:
        if row.status == TaskStatus.RUNNING:
            claimed = ClaimedTask(
                id=row.id,
                attempt=row.attempts,
                workflow_id=row.workflow_id,
                name=row.name,
                handler=None,
                model_type=None,
                params=None,
                timeout_s=None,
                max_attempts=row.max_attempts,
                resumes=row.resumes,
            )
            error = (
                f"worker {row.lease_owner} lost during attempt {row.attempts} of "
                f"{row.max_attempts} (lease expired; the process died or hung)"
            )
            # The claim's own start time stays on the task row.
            lost = Outcome(
                claimed,
                ok=False,
                started_at=row.started_at or now,
                finished_at=now,
                error=error,
                kind="lost",
            )
            if fail_attempt_txn(conn, lost, retry_base_s=retry_base_s, retry_max_s=retry_max_s):
                out.lost.append(row.id)
                touched.add(row.workflow_id)
        elif row.dispatch_count >= MAX_DISPATCHES:
            error = (
                f"quarantined: sent {row.dispatch_count} times and never claimed by a live "
                "worker (undeliverable or undecodable message, or no worker consumes its queue)"
            )
            changed = conn.execute(
                tasks.update()
                .where(tasks.c.id == row.id, tasks.c.status == TaskStatus.QUEUED)
                .values(
                    status=TaskStatus.FAILED,
                    error=error,
                    finished_at=now,
                    lease_expires_at=None,
                )
                .returning(tasks.c.id)
            ).first()
            if changed:
                propagate_failure_txn(conn, row.id, row.workflow_id, error)
                out.quarantined.append(row.id)
                touched.add(row.workflow_id)
        else:
            conn.execute(
                tasks.update()
                .where(tasks.c.id == row.id, tasks.c.status == TaskStatus.QUEUED)
                .values(
                    lease_expires_at=now + dt.timedelta(seconds=dispatch_timeout_s),
                    dispatch_count=tasks.c.dispatch_count + 1,
                )
            )
            out.resend.append(
                Dispatch(row.id, row.attempts + 1, row.workflow_id, alone=True, queue=row.queue)
            )
    settle_workflows_txn(conn, touched)
    return out
