"""Dispatch: a ready task is leased (``ready|retrying -> queued``) for a message to carry it
to a worker.

The controller leases in its scheduling policy's order (:func:`dispatch_ready_txn`). A
submitter or a finishing worker leases what it just made ready itself when the queue is idle
(:func:`dispatch_now_txn`): with nothing else waiting there is nothing to order it against.
Either way the lease is one guarded statement, so two controllers never send the same attempt.
Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa

from kiln.core.execution import Dispatch
from kiln.core.states import TaskStatus
from kiln.store.clauses import DISPATCHABLE, run_is_active, served_clause
from kiln.store.db import utcnow
from kiln.store.dialects import statements
from kiln.store.schema import tasks

# A message re-sent this many times without any worker claiming it is quarantined: its
# payload cannot be processed (or no worker consumes the queue), and retrying forever would
# hide that. Re-sends wait for a live worker (``recover_txn``), so an outage does not count.
MAX_DISPATCHES = 20

# An ordered dispatch also ranks this share of its batch size from the longest waiting (at
# least one), whatever their priority: see :func:`dispatch_candidates_txn`.
ORDER_OLDEST_SHARE = 8


def dispatchable_tasks(*extra: sa.ColumnElement[Any]) -> sa.Select:
    """Dispatchable tasks of active runs, best first by (priority, age), with the columns the
    scheduling policies read (``kiln.app.scheduler.item_of``) and placement needs, plus
    ``extra``. The controller's candidates and the scheduler's view of the queue start here."""
    return (
        sa.select(
            tasks.c.id,
            tasks.c.workflow_id,
            tasks.c.priority,
            tasks.c.created_at,
            tasks.c.ready_at,
            tasks.c.handler,
            tasks.c.model_type,
            tasks.c.predicted,
            *extra,
        )
        .where(
            tasks.c.status.in_(DISPATCHABLE),
            tasks.c.map_over.is_(None),  # a map task is expanded (kiln.store.maps), not sent
            run_is_active(),
        )
        .order_by(tasks.c.priority.desc(), tasks.c.ready_at, tasks.c.id)
    )


def dispatch_candidates_txn(
    conn: sa.Connection,
    *,
    limit: int,
    now: dt.datetime,
    queues: Collection[str] | None = None,
    oldest: int = 0,
) -> list[Any]:
    """Lock up to ``limit`` dispatchable tasks of runs that are not paused, best first by
    (priority, age), and with ``oldest`` also up to that many of the longest waiting. Other
    controllers skip the locked rows. A ``model_type`` task is a candidate only while a live
    instance serves it (the controller's ``note_unroutable`` hook says why the others wait); a
    task of a named queue only when ``queues`` (those live workers consume; None: all) holds
    it (:func:`note_unserved_queues_txn`).

    The oldest are there for a policy that ranks by age (FIFO) or ages work (Priority's
    aging, ShortestPredicted's, the deadline rules): ranked among the best by priority alone,
    an old low-priority task behind a backlog of higher ones larger than ``limit`` would never
    reach the policy, and wait as long as the backlog lasts whatever its aging says."""
    q = (
        dispatchable_tasks(tasks.c.attempts)
        .where(
            sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
            sa.or_(tasks.c.handler.is_not(None), served_clause(tasks.c.model_type, now)),
        )
        .with_for_update(skip_locked=True, of=tasks)
    )
    if queues is not None:
        q = q.where(sa.or_(tasks.c.queue.is_(None), tasks.c.queue.in_(sorted(queues))))
    return best_and_oldest(conn, q, limit=limit, oldest=oldest)


def best_and_oldest(conn: sa.Connection, q: sa.Select, *, limit: int, oldest: int) -> list[Any]:
    """The first ``limit`` rows of ``q`` (a :func:`dispatchable_tasks` query, best first), then
    up to ``oldest`` of the longest waiting that are not among them."""
    rows = list(conn.execute(q.limit(limit)))
    if oldest > 0:
        # Rows this transaction locked already are not skipped by SKIP LOCKED: drop them here.
        by_age = q.order_by(None).order_by(tasks.c.ready_at, tasks.c.id).limit(oldest)
        seen = {r.id for r in rows}
        rows += [r for r in conn.execute(by_age) if r.id not in seen]
    return rows


def oldest_ranked(limit: int) -> int:
    """How many of the longest waiting an ordered pass of ``limit`` ranks besides the best:
    ``limit // ORDER_OLDEST_SHARE``, at least one."""
    return max(1, limit // ORDER_OLDEST_SHARE)


def note_unserved_queues_txn(conn: sa.Connection, queues: Collection[str]) -> int:
    """Say why dispatchable tasks of a queue no live worker consumes (not in ``queues``) are
    not dispatched; leasing them clears it (``mark_queued``)."""
    reason = sa.literal("no live worker consumes queue ", sa.Text) + tasks.c.queue
    return conn.execute(
        tasks.update()
        .where(
            tasks.c.status.in_(DISPATCHABLE),
            tasks.c.queue.is_not(None),
            tasks.c.queue.not_in(sorted(queues)),
            tasks.c.waiting_reason.is_distinct_from(reason),
        )
        .values(waiting_reason=reason)
    ).rowcount


def mark_queued_txn(
    conn: sa.Connection, task_ids: Sequence[int], *, now: dt.datetime, lease_until: dt.datetime
) -> list[Dispatch]:
    """ready/retrying -> queued for the given tasks, keeping the caller's order; their runs
    go pending -> running."""
    if not task_ids:
        return []
    rows = statements(conn).mark_queued(conn, task_ids, now=now, lease=lease_until)
    by_id = {
        r.id: Dispatch(
            r.id, r.attempts + 1, r.workflow_id, alone=r.model_type is not None, queue=r.queue
        )
        for r in rows
    }
    return [by_id[i] for i in task_ids if i in by_id]


# Direct dispatch is for an idle system only: past this many tasks already sent and not yet
# claimed, newly ready work waits for the controller and its scheduling policy.
DIRECT_DISPATCH_MAX_QUEUED = 16


def queue_is_idle_txn(conn: sa.Connection, *, excluding: Sequence[int] = ()) -> bool:
    """True when no dispatchable task (other than ``excluding``) waits for the controller and
    fewer than ``DIRECT_DISPATCH_MAX_QUEUED`` tasks are sent but not yet claimed."""
    return statements(conn).queue_is_idle(
        conn, now=utcnow(), excluding=excluding, cap=DIRECT_DISPATCH_MAX_QUEUED
    )


def dispatch_now_txn(
    conn: sa.Connection, task_ids: Sequence[int], *, lease_s: float
) -> list[Dispatch]:
    """Lease tasks that just became ready for their creator to send itself, skipping the
    controller's hop, when the queue is idle (:func:`queue_is_idle_txn`): with nothing else
    waiting there is nothing for the scheduler to order them against, so this saves latency
    without bypassing any policy. Otherwise (or for ``model_type`` tasks, which need
    placement) returns ``[]`` and leaves them to the controller."""
    if not task_ids or not queue_is_idle_txn(conn, excluding=task_ids):
        return []
    now = utcnow()
    eligible = set(
        conn.execute(
            sa.select(tasks.c.id).where(
                tasks.c.id.in_(list(task_ids)),
                tasks.c.handler.is_not(None),
                tasks.c.not_before.is_(None),
                tasks.c.queue.is_(None),  # a named queue's wait for a controller
                tasks.c.map_over.is_(None),
                run_is_active(),
            )
        ).scalars()
    )
    chosen = [i for i in task_ids if i in eligible]
    return mark_queued_txn(conn, chosen, now=now, lease_until=now + dt.timedelta(seconds=lease_s))


def dispatch_ready_txn(
    conn: sa.Connection,
    *,
    limit: int,
    lease_s: float,
    order: Callable[[list[Any], int], list[Any]] | None = None,
    queues: Collection[str] | None = None,
) -> list[Dispatch]:
    """Lease up to ``limit`` ready tasks for dispatch, in the order ``order`` gives (default
    priority then age), of named queues only those in ``queues`` (None: all). The caller
    commits, then sends one message per batch.

    ``order(candidates, limit)`` ranks the best ``limit`` by priority and the
    ``limit // ORDER_OLDEST_SHARE`` oldest (at least one), and returns at most ``limit``."""
    now = utcnow()
    oldest = oldest_ranked(limit) if order is not None else 0
    candidates = dispatch_candidates_txn(conn, limit=limit, now=now, queues=queues, oldest=oldest)
    if order is not None:
        candidates = order(candidates, limit)[:limit]
    return mark_queued_txn(
        conn,
        [c.id for c in candidates],
        now=now,
        lease_until=now + dt.timedelta(seconds=lease_s),
    )


def queued_count(conn: sa.Connection) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(tasks).where(tasks.c.status == TaskStatus.QUEUED)
    ).scalar_one()
