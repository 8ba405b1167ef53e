"""Task transitions: dispatch, claim, finish, retry, recovery, leases and progress.

This module is the one place where a task changes state. Every change is a single guarded
statement whose ``WHERE`` clause names the allowed source state(s) from ``engine.states``
(and, for a worker, the attempt number it was given), so a stale or duplicate actor changes
nothing. Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from engine import pgsql
from engine.db import is_postgres, notify_ready, utcnow
from engine.retry import backoff_s
from engine.schema import Timestamp, task_attempts, task_dependencies, tasks, workflows
from engine.states import TASK_DISPATCHABLE, TASK_NOT_STARTED, TaskStatus, WorkflowStatus
from engine.templating import ReferenceError_, find_references, resolve
from engine.workflows import mark_running_txn, settle_workflows_txn

log = logging.getLogger("kiln.tasks")

DISPATCHABLE = [str(s) for s in TASK_DISPATCHABLE]
NOT_STARTED = [str(s) for s in TASK_NOT_STARTED]
# A message re-sent this many times without any worker claiming it is quarantined: its
# payload cannot be processed (or no worker consumes the queue), and retrying forever would
# hide that.
MAX_DISPATCHES = 20


@dataclass(frozen=True)
class Dispatch:
    """A task leased for dispatch: the message to send carries ``(task_id, attempt)``."""

    task_id: int
    attempt: int
    workflow_id: int
    # A model_type task waits on a TaskInstance for most of its run: it gets a message (and
    # so a worker thread) of its own instead of sharing a batch with others.
    alone: bool = False


@dataclass
class ClaimedTask:
    id: int
    attempt: int
    workflow_id: int
    name: str
    handler: str | None
    model_type: str | None
    params: Any
    timeout_s: float | None
    max_attempts: int
    param_error: str | None = None


@dataclass
class Outcome:
    """What a worker observed running one claimed task."""

    task: ClaimedTask
    ok: bool
    started_at: dt.datetime
    finished_at: dt.datetime
    result: Any = None
    error: str | None = None
    retryable: bool = True
    kind: str = "failed"  # failed | timed_out


@dataclass
class RecordReport:
    applied: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    readied: list[int] = field(default_factory=list)
    dispatched: list[Dispatch] = field(default_factory=list)  # for the caller to send


# --- dispatch (controller) ------------------------------------------------------------


def dispatch_candidates_txn(conn: sa.Connection, *, limit: int, now: dt.datetime) -> list[Any]:
    """Lock up to ``limit`` dispatchable tasks of runs that are not paused, best first by
    (priority, age). Other controllers skip the locked rows. A ``model_type`` task is a
    candidate only while a live instance serves it (the controller's ``note_unroutable``
    hook says why the others wait)."""
    from engine.instances import served_clause

    q = (
        sa.select(
            tasks.c.id,
            tasks.c.attempts,
            tasks.c.workflow_id,
            tasks.c.priority,
            tasks.c.created_at,
            tasks.c.ready_at,
            tasks.c.handler,
            tasks.c.model_type,
            tasks.c.predicted,
        )
        .where(
            tasks.c.status.in_(DISPATCHABLE),
            sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
            sa.or_(tasks.c.handler.is_not(None), served_clause(tasks.c.model_type, now)),
            sa.exists().where(
                workflows.c.id == tasks.c.workflow_id,
                workflows.c.status.in_([WorkflowStatus.PENDING, WorkflowStatus.RUNNING]),
            ),
        )
        .order_by(tasks.c.priority.desc(), tasks.c.ready_at, tasks.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=tasks)
    )
    return list(conn.execute(q))


def mark_queued_txn(
    conn: sa.Connection, task_ids: Sequence[int], *, now: dt.datetime, lease_until: dt.datetime
) -> list[Dispatch]:
    """ready/retrying -> queued for the given tasks, keeping the caller's order; their runs
    go pending -> running. On PostgreSQL both are one statement."""
    if not task_ids:
        return []
    if is_postgres(conn):
        rows = conn.execute(
            pgsql.MARK_QUEUED, {"ids": list(task_ids), "now": now, "lease": lease_until}
        ).all()
    else:
        rows = conn.execute(
            tasks.update()
            .where(tasks.c.id.in_(list(task_ids)), tasks.c.status.in_(DISPATCHABLE))
            .values(
                status=TaskStatus.QUEUED,
                queued_at=now,
                lease_expires_at=lease_until,
                dispatch_count=tasks.c.dispatch_count + 1,
                not_before=None,
                waiting_reason=None,
            )
            .returning(tasks.c.id, tasks.c.attempts, tasks.c.workflow_id, tasks.c.model_type)
        ).all()
    by_id = {
        r.id: Dispatch(r.id, r.attempts + 1, r.workflow_id, alone=r.model_type is not None)
        for r in rows
    }
    if not is_postgres(conn):
        mark_running_txn(conn, (d.workflow_id for d in by_id.values()))
    return [by_id[i] for i in task_ids if i in by_id]


# Direct dispatch is for an idle system only: past this many tasks already sent and not yet
# claimed, newly ready work waits for the controller and its scheduling policy.
DIRECT_DISPATCH_MAX_QUEUED = 16


def queue_is_idle_txn(conn: sa.Connection, *, excluding: Sequence[int] = ()) -> bool:
    """True when no dispatchable task (other than ``excluding``) waits for the controller and
    fewer than ``DIRECT_DISPATCH_MAX_QUEUED`` tasks are sent but not yet claimed."""
    now = utcnow()
    if is_postgres(conn):
        return bool(
            conn.execute(
                pgsql.QUEUE_IS_IDLE,
                {"now": now, "excluding": list(excluding), "cap": DIRECT_DISPATCH_MAX_QUEUED},
            ).scalar()
        )
    waiting = (
        sa.select(tasks.c.id)
        .where(
            tasks.c.status.in_(DISPATCHABLE),
            sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
            sa.exists().where(
                workflows.c.id == tasks.c.workflow_id,
                workflows.c.status.in_([WorkflowStatus.PENDING, WorkflowStatus.RUNNING]),
            ),
        )
        .limit(1)
    )
    if excluding:
        waiting = waiting.where(tasks.c.id.not_in(list(excluding)))
    in_flight = (
        sa.select(tasks.c.id)
        .where(tasks.c.status == TaskStatus.QUEUED)
        .limit(DIRECT_DISPATCH_MAX_QUEUED)
        .subquery()
    )
    row = conn.execute(
        sa.select(
            sa.exists(waiting).label("waiting"),
            sa.select(sa.func.count()).select_from(in_flight).scalar_subquery().label("in_flight"),
        )
    ).one()
    return not row.waiting and row.in_flight < DIRECT_DISPATCH_MAX_QUEUED


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
                sa.exists().where(
                    workflows.c.id == tasks.c.workflow_id,
                    workflows.c.status.in_([WorkflowStatus.PENDING, WorkflowStatus.RUNNING]),
                ),
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
    order: Callable[[list[Any]], list[Any]] | None = None,
) -> list[Dispatch]:
    """Lease up to ``limit`` ready tasks for dispatch, in the order ``order`` gives (default
    priority then age). The caller commits, then sends one message per batch."""
    now = utcnow()
    candidates = dispatch_candidates_txn(conn, limit=limit, now=now)
    if order is not None:
        candidates = order(candidates)
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


# --- claim (worker) ---------------------------------------------------------------------


def claim_txn(
    conn: sa.Connection,
    items: Iterable[tuple[int, int]],
    *,
    worker_id: str,
    lease_s: float,
) -> list[ClaimedTask]:
    """queued -> running for each ``(task_id, attempt)`` still queued at ``attempt - 1``
    claims; counts the attempt and records it in ``task_attempts``. Items whose task moved on
    (already claimed by a duplicate message, cancelled, paused) are skipped."""
    items = list(items)
    if not items:
        return []
    now = utcnow()
    if is_postgres(conn):
        rows = conn.execute(
            pgsql.CLAIM,
            {
                "ids": [t for t, _ in items],
                "prev": [a - 1 for _, a in items],
                "worker": worker_id,
                "now": now,
                "lease": now + dt.timedelta(seconds=lease_s),
            },
        ).all()
    else:
        rows = _claim_portable_txn(conn, items, worker_id=worker_id, lease_s=lease_s, now=now)
    if not rows:
        return []
    claimed = [
        ClaimedTask(
            id=r.id,
            attempt=r.attempts,
            workflow_id=r.workflow_id,
            name=r.name,
            handler=r.handler,
            model_type=r.model_type,
            params=r.params,
            timeout_s=r.timeout_s,
            max_attempts=r.max_attempts,
        )
        for r in rows
    ]
    _resolve_references_txn(conn, claimed)
    order = {t: i for i, (t, _) in enumerate(items)}
    return sorted(claimed, key=lambda c: order[c.id])


def _claim_portable_txn(
    conn: sa.Connection,
    items: list[tuple[int, int]],
    *,
    worker_id: str,
    lease_s: float,
    now: dt.datetime,
) -> list[Any]:
    rows = conn.execute(
        tasks.update()
        .where(
            sa.tuple_(tasks.c.id, tasks.c.attempts).in_([(t, a - 1) for t, a in items]),
            tasks.c.status == TaskStatus.QUEUED,
        )
        .values(
            status=TaskStatus.RUNNING,
            attempts=tasks.c.attempts + 1,
            lease_owner=worker_id,
            lease_expires_at=now + dt.timedelta(seconds=lease_s),
            started_at=now,
            progress=None,
            progress_message=None,
        )
        .returning(
            tasks.c.id,
            tasks.c.attempts,
            tasks.c.workflow_id,
            tasks.c.name,
            tasks.c.handler,
            tasks.c.model_type,
            tasks.c.params,
            tasks.c.timeout_s,
            tasks.c.max_attempts,
        )
    ).all()
    if rows:
        conn.execute(
            task_attempts.insert(),
            [
                {"task_id": r.id, "attempt": r.attempts, "worker": worker_id, "started_at": now}
                for r in rows
            ],
        )
    return rows


def _resolve_references_txn(conn: sa.Connection, claimed: list[ClaimedTask]) -> None:
    wanted: dict[int, set[str]] = {}
    refs_of: dict[int, set[str]] = {}
    for c in claimed:
        refs = find_references(c.params)
        if refs:
            refs_of[c.id] = refs
            wanted.setdefault(c.workflow_id, set()).update(refs)
    if not wanted:
        return
    results: dict[int, dict[str, Any]] = {w: {} for w in wanted}
    for wf_id, names in wanted.items():
        for row in conn.execute(
            sa.select(tasks.c.name, tasks.c.result).where(
                tasks.c.workflow_id == wf_id,
                tasks.c.name.in_(sorted(names)),
                tasks.c.status == TaskStatus.SUCCEEDED,
            )
        ):
            results[wf_id][row.name] = row.result
    for c in claimed:
        if c.id in refs_of:
            try:
                c.params = resolve(c.params, results[c.workflow_id])
            except ReferenceError_ as exc:
                c.param_error = exc.message


# --- finish (worker) --------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _values_update_sql(n: int) -> sa.TextClause:
    """SQLite: one statement that finishes ``n`` tasks, running -> succeeded fenced by attempt
    (PostgreSQL does more in one statement: :func:`engine.pgsql.finish_sql`)."""
    rows = ", ".join(f"(:i{k}, :a{k}, :r{k}, :s{k}, :f{k})" for k in range(n))
    sql = sa.text(
        "UPDATE tasks SET status = 'succeeded', result = v.column3, "
        "started_at = v.column4, finished_at = v.column5, lease_owner = NULL, "
        "lease_expires_at = NULL, progress = 1.0, error = NULL "
        f"FROM (VALUES {rows}) AS v "
        "WHERE tasks.id = v.column1 AND tasks.attempts = v.column2 "
        "AND tasks.status = 'running' "
        "RETURNING tasks.id, tasks.workflow_id"
    )
    return sql.bindparams(*pgsql.outcome_bindparams(n))


def record_outcomes_txn(
    conn: sa.Connection,
    outcomes: Sequence[Outcome],
    *,
    retry_base_s: float,
    retry_max_s: float,
    dispatch_lease_s: float | None = None,
) -> RecordReport:
    """Record what workers observed, in one transaction: results for successes (and the
    dependents they make ready), retries or failures for the rest. An outcome whose attempt no
    longer owns its task is refused and reported in ``stale``. With ``dispatch_lease_s`` the
    dependents made ready are leased for the caller to send at once when the queue is idle
    (see :func:`dispatch_now_txn`)."""
    report = RecordReport()
    successes = [o for o in outcomes if o.ok]
    touched: set[int] = set()
    if successes:
        params: dict[str, Any] = {}
        for k, o in enumerate(successes):
            params.update(
                {
                    f"i{k}": o.task.id,
                    f"a{k}": o.task.attempt,
                    f"r{k}": o.result,
                    f"s{k}": o.started_at,
                    f"f{k}": o.finished_at,
                }
            )
        if is_postgres(conn):
            params["now"] = utcnow()
            rows = conn.execute(pgsql.finish_sql(len(successes)), params).all()
            done = [r for r in rows if r.kind == "done"]
            readied = [r.id for r in rows if r.kind == "ready"]
        else:
            done = conn.execute(_values_update_sql(len(successes)), params).all()
        done_ids = {r.id for r in done}
        touched.update(r.workflow_id for r in done)
        report.applied += sorted(done_ids)
        report.stale += [o.task.id for o in successes if o.task.id not in done_ids]
        _close_attempts_txn(conn, [o for o in successes if o.task.id not in done_ids], "stale")
        if is_postgres(conn):
            report.readied = readied
        else:
            _close_attempts_txn(conn, [o for o in successes if o.task.id in done_ids], "succeeded")
            report.readied = _ready_dependents_txn(conn, sorted(done_ids))
        if dispatch_lease_s is not None:
            report.dispatched = dispatch_now_txn(conn, report.readied, lease_s=dispatch_lease_s)
        if len(report.dispatched) < len(report.readied):
            notify_ready(conn)  # the controller dispatches what was not sent directly
    for o in outcomes:
        if o.ok:
            continue
        applied = fail_attempt_txn(conn, o, retry_base_s=retry_base_s, retry_max_s=retry_max_s)
        (report.applied if applied else report.stale).append(o.task.id)
        if applied:
            touched.add(o.task.workflow_id)
    if report.stale:
        log.warning("refused stale results for tasks %s", report.stale)
    settle_workflows_txn(conn, touched)
    return report


def _close_attempts_txn(conn: sa.Connection, outcomes: Sequence[Outcome], outcome: str) -> None:
    if not outcomes:
        return
    conn.execute(
        task_attempts.update()
        .where(
            sa.tuple_(task_attempts.c.task_id, task_attempts.c.attempt).in_(
                [(o.task.id, o.task.attempt) for o in outcomes]
            ),
            task_attempts.c.outcome == "running",
        )
        .values(outcome=outcome, finished_at=outcomes[0].finished_at)
    )


def _ready_dependents_txn(conn: sa.Connection, succeeded: list[int]) -> list[int]:
    """Count down the dependencies of the tasks that wait on ``succeeded``; those reaching
    zero go pending -> ready."""
    if not succeeded:
        return []
    d = task_dependencies
    children = sa.select(d.c.task_id).where(d.c.depends_on_id.in_(succeeded)).scalar_subquery()
    done_here = (
        sa.select(sa.func.count())
        .where(d.c.task_id == tasks.c.id, d.c.depends_on_id.in_(succeeded))
        .scalar_subquery()
    )
    ready = conn.execute(
        tasks.update()
        .where(tasks.c.id.in_(children), tasks.c.status == TaskStatus.PENDING)
        .values(deps_remaining=tasks.c.deps_remaining - done_here)
        .returning(tasks.c.id, tasks.c.deps_remaining)
    ).all()
    to_ready = [r.id for r in ready if r.deps_remaining <= 0]
    if to_ready:
        conn.execute(
            tasks.update()
            .where(tasks.c.id.in_(to_ready), tasks.c.status == TaskStatus.PENDING)
            .values(status=TaskStatus.READY, ready_at=utcnow())
        )
    return to_ready


def fail_attempt_txn(
    conn: sa.Connection, o: Outcome, *, retry_base_s: float, retry_max_s: float
) -> bool:
    """running -> retrying (attempts left and retryable) or failed; fenced by attempt."""
    t = o.task
    retry = o.retryable and t.attempt < t.max_attempts
    values: dict[str, Any] = {
        "error": o.error,
        "lease_owner": None,
        "lease_expires_at": None,
        "started_at": o.started_at,
    }
    if retry:
        wait = backoff_s(t.attempt, base_s=retry_base_s, max_s=retry_max_s)
        values |= {
            "status": TaskStatus.RETRYING,
            "not_before": o.finished_at + dt.timedelta(seconds=wait),
            "ready_at": o.finished_at + dt.timedelta(seconds=wait),
        }
    else:
        values |= {"status": TaskStatus.FAILED, "finished_at": o.finished_at}
    changed = conn.execute(
        tasks.update()
        .where(
            tasks.c.id == t.id,
            tasks.c.attempts == t.attempt,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .values(**values)
        .returning(tasks.c.id)
    ).first()
    conn.execute(
        task_attempts.update()
        .where(
            task_attempts.c.task_id == t.id,
            task_attempts.c.attempt == t.attempt,
            task_attempts.c.outcome == "running",
        )
        .values(outcome=o.kind if changed else "stale", error=o.error, finished_at=o.finished_at)
    )
    if changed is None:
        return False
    if retry:
        notify_ready(conn)
    else:
        propagate_failure_txn(conn, t.id, t.workflow_id, f"task {t.name!r} failed: {o.error}")
    return True


def propagate_failure_txn(conn: sa.Connection, task_id: int, workflow_id: int, error: str) -> None:
    """After ``task_id`` failed for good: its transitive dependents become upstream_failed;
    with ``on_error=stop`` the run fails at once and its other unstarted tasks are
    cancelled (running ones finish and are recorded)."""
    now = utcnow()
    conn.execute(
        sa.text(
            "WITH RECURSIVE downstream(id) AS ("
            " SELECT task_id FROM task_dependencies WHERE depends_on_id = :failed"
            " UNION SELECT d.task_id FROM task_dependencies d"
            " JOIN downstream ON d.depends_on_id = downstream.id)"
            " UPDATE tasks SET status = 'upstream_failed', finished_at = :now,"
            " lease_owner = NULL, lease_expires_at = NULL, error = :error"
            " WHERE id IN (SELECT id FROM downstream) AND status IN ('pending', 'ready',"
            " 'retrying', 'queued')"
        ).bindparams(sa.bindparam("now", type_=Timestamp)),
        {"failed": task_id, "now": now, "error": f"upstream failed: {error}"},
    )
    on_error = conn.execute(
        sa.select(workflows.c.on_error).where(workflows.c.id == workflow_id)
    ).scalar()
    if on_error == "stop":
        conn.execute(
            workflows.update()
            .where(
                workflows.c.id == workflow_id,
                workflows.c.status.in_(
                    [WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.PAUSED]
                ),
            )
            .values(status=WorkflowStatus.FAILED, finished_at=now, error=error)
        )
        conn.execute(
            tasks.update()
            .where(tasks.c.workflow_id == workflow_id, tasks.c.status.in_(NOT_STARTED))
            .values(
                status=TaskStatus.CANCELLED,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error=f"not run: {error} (on_error=stop)",
            )
        )
    else:
        conn.execute(
            workflows.update()
            .where(workflows.c.id == workflow_id, workflows.c.error.is_(None))
            .values(error=error)
        )
