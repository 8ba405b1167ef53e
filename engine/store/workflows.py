"""Workflow runs: submission, reading, and the workflow-level transitions.

Functions ending in ``_txn`` take a connection inside a transaction and never commit; their
caller owns the transaction (see ``kiln.app.runtime`` for the public, committing versions).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import IllegalTransition, WorkflowNotFound
from kiln.core.idempotency import IdempotencyKey, check_replay
from kiln.core.states import (
    TASK_ACTIVE,
    WORKFLOW_TRANSITIONS,
    TaskStatus,
    WorkflowStatus,
    sources_of,
)
from kiln.store.base import Statements
from kiln.store.clauses import status_in, status_literal, taken_back
from kiln.store.db import utcnow
from kiln.store.dialects import notify_ready, statements
from kiln.store.lineage import descendants, wake_parents_txn
from kiln.store.schema import task_attempts, task_dependencies, tasks, workflows


def submit_workflow_txn(
    conn: sa.Connection,
    spec: WorkflowSpec,
    *,
    idempotency_key: IdempotencyKey | None = None,
    notify: bool = True,
) -> tuple[int, bool]:
    wf_id, created, _ = insert_workflow_txn(
        conn, spec, idempotency_key=idempotency_key, notify=notify
    )
    return wf_id, created


def direct_names(spec: WorkflowSpec) -> list[str]:
    """The tasks a submitter may lease and send itself on an idle queue: handler tasks with
    no dependencies (``model_type`` tasks need placement; a named queue's need a live worker
    of that pool, which the controller checks), highest priority first."""
    ready = [
        t
        for t in spec.tasks
        if not t.depends_on and t.handler and t.queue is None and t.map_over is None
    ]
    ready.sort(key=lambda t: -t.priority)
    return [t.name for t in ready]


def run_rows(
    spec: WorkflowSpec, idempotency_key: IdempotencyKey | None, now: dt.datetime
) -> tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, str]]]:
    """The workflow row, the task rows (each with ``direct``, see :func:`direct_names`) and
    the edges ``(task, dependency)`` that store ``spec``."""
    values = {
        "name": spec.name,
        "status": WorkflowStatus.PENDING,
        "on_error": spec.on_error,
        "priority": spec.priority,
        "definition": spec.to_dict(),
        "idempotency_key": idempotency_key.stored if idempotency_key else None,
        "idempotency_fingerprint": idempotency_key.fingerprint if idempotency_key else None,
        "created_at": now,
    }
    direct = set(direct_names(spec))
    rows = [
        {
            "name": t.name,
            "handler": t.handler,
            "model_type": t.model_type,
            "params": t.params,
            "status": TaskStatus.READY if not t.depends_on else TaskStatus.PENDING,
            "priority": t.priority + spec.priority,
            "max_attempts": t.max_attempts,
            "timeout_s": t.timeout_s,
            "retry": t.retry,
            "deps_remaining": len(set(t.depends_on)),
            "created_at": now,
            "ready_at": None if t.depends_on else now,
            "direct": t.name in direct,
            "queue": t.queue,
            "map_over": t.map_over,
        }
        for t in spec.tasks
    ]
    edges = [(t.name, d) for t in spec.tasks for d in sorted(set(t.depends_on))]
    return values, rows, edges


def insert_workflow_txn(
    conn: sa.Connection,
    spec: WorkflowSpec,
    *,
    idempotency_key: IdempotencyKey | None = None,
    notify: bool = True,
    lease: tuple[dt.datetime, int] | None = None,
    now: dt.datetime | None = None,
    trace_context: str | None = None,
) -> tuple[int, bool, dict[str, tuple[int, str]]]:
    """Write the run, its tasks and edges; return ``(workflow_id, created, {task name: (id,
    status)})``.

    With an idempotency key already used on the same request, nothing is written and the
    existing run's id is returned with ``created=False`` (and ``{}``); used on a different
    request, IdempotencyKeyReused is raised. ``lease=(until, max_queued)``: if the queue
    is idle (fewer than ``max_queued`` tasks sent and not claimed, nothing else dispatchable),
    the :func:`direct_names` tasks are written ``queued`` with that lease, for the caller to
    send (``kiln.store.submit``); otherwise, with ``notify``, controllers are woken.
    ``now``: the run's ``created_at`` (default: the current time). ``trace_context``: the
    traceparent of the span that submitted it (``kiln.app.tracing``).
    """
    now = now or utcnow()
    values, rows, edges = run_rows(spec, idempotency_key, now)
    values["trace_context"] = trace_context
    wf_id, by_name = statements(conn).insert_run(
        conn, values, rows, edges, now=now, notify=notify, lease=lease
    )
    if wf_id is None:  # the idempotency key was used already
        assert idempotency_key is not None
        return replayed_run(conn, idempotency_key), False, {}
    return wf_id, True, by_name


def replayed_run(conn: sa.Connection, idempotency_key: IdempotencyKey) -> int:
    """The run an insert with ``idempotency_key`` found already there; raises
    IdempotencyKeyReused when that key came with another request."""
    existing = conn.execute(
        sa.select(workflows.c.id, workflows.c.idempotency_fingerprint).where(
            workflows.c.idempotency_key == idempotency_key.stored
        )
    ).one()
    check_replay(idempotency_key, existing.idempotency_fingerprint)
    return int(existing.id)


def settle_workflows_txn(conn: sa.Connection, workflow_ids: Iterable[int]) -> None:
    """Finish the given runs that have no active task left: ``succeeded`` when every task
    succeeded, ``failed`` otherwise. Runs with active tasks are left alone."""
    ids = sorted(set(workflow_ids))
    if not ids:
        return
    lock, settle = _settle_statements(statements(conn))
    # Two workers finishing a run's last two tasks concurrently would each still see the
    # other's task as active and neither would settle the run. Locking the run rows first (in
    # id order, against deadlocks) serialises them: the second one to get the lock re-reads
    # under READ COMMITTED and sees the first one's committed tasks.
    conn.execute(lock, {"ids": ids})
    ended = conn.execute(settle, {"ids": ids, "now": utcnow()}).all()
    wake_parents_txn(conn, [r.id for r in ended if r.parent_task_id is not None])


@functools.cache
def _settle_statements(stmts: Statements) -> tuple[sa.Select[Any], sa.Update]:
    """:func:`settle_workflows_txn`'s two statements, built once per database: every finish
    runs them, and building them took longer than running them."""
    t = tasks.alias("t")
    any_active = sa.exists().where(
        t.c.workflow_id == workflows.c.id, status_in(t.c.status, TASK_ACTIVE)
    )
    any_unsuccessful = sa.exists().where(
        t.c.workflow_id == workflows.c.id,
        t.c.status != status_literal(TaskStatus.SUCCEEDED),
    )
    lock = (
        sa.select(workflows.c.id)
        .where(stmts.among(workflows.c.id, "ids"))
        .order_by(workflows.c.id)
        .with_for_update()
    )
    settle = (
        workflows.update()
        .where(
            stmts.among(workflows.c.id, "ids"),
            status_in(
                workflows.c.status, sources_of(WORKFLOW_TRANSITIONS, WorkflowStatus.SUCCEEDED)
            ),
            ~any_active,
        )
        .values(
            status=sa.case(
                (any_unsuccessful, status_literal(WorkflowStatus.FAILED)),
                else_=status_literal(WorkflowStatus.SUCCEEDED),
            ),
            finished_at=sa.bindparam("now", type_=workflows.c.finished_at.type),
        )
        .returning(workflows.c.id, workflows.c.parent_task_id)
    )
    return lock, settle


def _transition(
    conn: sa.Connection, workflow_id: int, target: WorkflowStatus, **values: Any
) -> None:
    allowed = sources_of(WORKFLOW_TRANSITIONS, target)
    changed = conn.execute(
        workflows.update()
        .where(workflows.c.id == workflow_id, workflows.c.status.in_(allowed))
        .values(status=target, **values)
        .returning(workflows.c.id)
    ).first()
    if changed is None:
        current = conn.execute(
            sa.select(workflows.c.status).where(workflows.c.id == workflow_id)
        ).scalar()
        if current is None:
            raise WorkflowNotFound(f"workflow {workflow_id} does not exist", id=workflow_id)
        raise IllegalTransition(
            f"workflow {workflow_id} is {current}; it can be {target.value} only from "
            f"{' or '.join(allowed)}",
            id=workflow_id,
            status=current,
        )


def cancel_workflow_txn(conn: sa.Connection, workflow_id: int) -> None:
    """Cancel the run, the runs below it (its child runs, theirs...), and every task of
    them not finished. A handler still running sees it within a second
    (``current_task().cancelled``); its result will be refused as stale. A task waiting for
    this run (its parent) wakes and finds it cancelled."""
    statements(conn).note_audit(conn, reason="cancel requested")
    now = utcnow()
    _transition(conn, workflow_id, WorkflowStatus.CANCELLED, finished_at=now)
    cancel_runs_txn(conn, descendants(workflow_id), now=now, error="parent run cancelled")
    _cancel_tasks_txn(conn, [workflow_id], now=now, error="workflow cancelled")
    wake_parents_txn(conn, [workflow_id])


def cancel_runs_txn(conn: sa.Connection, runs: Any, *, now: dt.datetime, error: str) -> None:
    """Cancel the active runs among ``runs`` (ids, or a select of them) and their unfinished
    tasks."""
    cancelled = (
        conn.execute(
            workflows.update()
            .where(
                workflows.c.id.in_(runs),
                workflows.c.status.in_(sources_of(WORKFLOW_TRANSITIONS, WorkflowStatus.CANCELLED)),
            )
            .values(status=WorkflowStatus.CANCELLED, finished_at=now, error=error)
            .returning(workflows.c.id)
        )
        .scalars()
        .all()
    )
    _cancel_tasks_txn(conn, sorted(cancelled), now=now, error=error)


def _cancel_tasks_txn(
    conn: sa.Connection, runs: list[int], *, now: dt.datetime, error: str
) -> None:
    if not runs:
        return
    conn.execute(
        tasks.update()
        .where(tasks.c.workflow_id.in_(runs), tasks.c.status.in_(list(TASK_ACTIVE)))
        .values(
            status=TaskStatus.CANCELLED,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error=error,
        )
    )


def pause_workflow_txn(conn: sa.Connection, workflow_id: int) -> int:
    """Stop dispatching the tasks of the run and of the runs below it. Running tasks finish
    and count; tasks dispatched but not yet claimed go back to ``ready``. Returns how many
    were taken back."""
    statements(conn).note_audit(conn, reason="pause requested")
    _transition(conn, workflow_id, WorkflowStatus.PAUSED)
    below = descendants(workflow_id)
    paused = (
        conn.execute(
            workflows.update()
            .where(
                workflows.c.id.in_(below),
                workflows.c.status.in_(sources_of(WORKFLOW_TRANSITIONS, WorkflowStatus.PAUSED)),
            )
            .values(status=WorkflowStatus.PAUSED)
            .returning(workflows.c.id)
        )
        .scalars()
        .all()
    )
    return conn.execute(
        tasks.update()
        .where(
            tasks.c.workflow_id.in_([workflow_id, *paused]),
            tasks.c.status == TaskStatus.QUEUED,
        )
        .values(taken_back(utcnow()))
    ).rowcount


def resume_workflow_txn(conn: sa.Connection, workflow_id: int) -> None:
    """Resume the run, and the runs below it that are paused."""
    statements(conn).note_audit(conn, reason="resume requested")
    _transition(conn, workflow_id, WorkflowStatus.RUNNING)
    resumed = (
        conn.execute(
            workflows.update()
            .where(
                workflows.c.id.in_(descendants(workflow_id)),
                workflows.c.status == WorkflowStatus.PAUSED,
            )
            .values(status=WorkflowStatus.RUNNING)
            .returning(workflows.c.id)
        )
        .scalars()
        .all()
    )
    notify_ready(conn)
    settle_workflows_txn(conn, [workflow_id, *resumed])


# --- reading ----------------------------------------------------------------------------


# A run's detail (GET /workflows/<id>) in two statements, three when other runs link to it:
# each statement is a round trip, and on a busy machine a round trip costs more than its
# query. Built once, with bound parameters: building a select is most of its Python cost.
_WORKFLOW_ID = sa.bindparam("workflow_id", type_=sa.BigInteger)
_RUN = sa.select(workflows).where(workflows.c.id == _WORKFLOW_ID)
_linked = workflows.alias("linked")
_DETAIL = sa.select(
    workflows,
    sa.select(sa.func.count())
    .where(tasks.c.workflow_id == workflows.c.id)
    .scalar_subquery()
    .label("tasks_total"),
    sa.exists()
    .where(
        sa.or_(_linked.c.parent_workflow_id == workflows.c.id, _linked.c.rerun_of == workflows.c.id)
    )
    .label("has_linked"),
).where(workflows.c.id == _WORKFLOW_ID)
# One row per (task, attempt) of the page, a task not yet claimed once with NULL attempt
# columns; ``depends_on_ids`` its dependencies' ids, comma-separated (ids, not names: a
# task's name may hold any character but braces). ``after`` 0 is the first page (ids start
# at 1); ``limit`` is one more than the page, saying whether a next page exists.
_page = (
    sa.select(tasks)
    .where(tasks.c.workflow_id == _WORKFLOW_ID, tasks.c.id > sa.bindparam("after"))
    .order_by(tasks.c.id)
    .limit(sa.bindparam("limit"))
    .subquery("page")
)
_ATTEMPT = "attempt_"  # prefix of the attempt columns in _TASKS' rows
_TASKS = (
    sa.select(
        _page,
        sa.select(
            sa.func.aggregate_strings(sa.cast(task_dependencies.c.depends_on_id, sa.Text), ",")
        )
        .where(task_dependencies.c.task_id == _page.c.id)
        .scalar_subquery()
        .label("depends_on_ids"),
        *(c.label(_ATTEMPT + c.name) for c in task_attempts.c),
    )
    .select_from(_page.outerjoin(task_attempts, task_attempts.c.task_id == _page.c.id))
    .order_by(_page.c.id, task_attempts.c.attempt)
)
_LINKED = (
    sa.select(
        workflows.c.id,
        workflows.c.name,
        workflows.c.status,
        workflows.c.parent_task_id,
        workflows.c.child_key,
        workflows.c.parent_workflow_id,
    )
    .where(
        sa.or_(workflows.c.parent_workflow_id == _WORKFLOW_ID, workflows.c.rerun_of == _WORKFLOW_ID)
    )
    .order_by(workflows.c.id)
)
_NO_LIMIT = 2**62  # tasks_limit None: every task (a run has at most 10,000)


def get_run(conn: sa.Connection, workflow_id: int) -> dict[str, Any]:
    """The run's own row, without its tasks."""
    row = conn.execute(_RUN, {"workflow_id": workflow_id}).mappings().first()
    if row is None:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist", id=workflow_id)
    return dict(row)


def get_workflow(
    conn: sa.Connection,
    workflow_id: int,
    *,
    tasks_limit: int | None = None,
    tasks_after: int | None = None,
) -> dict[str, Any]:
    """The run with its tasks in id order: all of them, or a page of ``tasks_limit`` with ids
    above ``tasks_after``. ``tasks_total`` counts them all; ``tasks_next_after`` is the
    ``tasks_after`` of the next page (None on the last)."""
    row = conn.execute(_DETAIL, {"workflow_id": workflow_id}).mappings().first()
    if row is None:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist", id=workflow_id)
    run = dict(row)
    has_linked = run.pop("has_linked")
    limit = _NO_LIMIT if tasks_limit is None else tasks_limit + 1
    params = {"workflow_id": workflow_id, "after": tasks_after or 0, "limit": limit}
    by_id: dict[int, dict[str, Any]] = {}
    dep_ids: dict[int, list[int]] = {}
    n = len(_ATTEMPT)
    for r in conn.execute(_TASKS, params).mappings():
        task = by_id.get(r["id"])
        if task is None:
            task = by_id[r["id"]] = {c.name: r[c.name] for c in tasks.c}
            task["attempt_history"] = []
            ids = r["depends_on_ids"]
            dep_ids[r["id"]] = [int(i) for i in ids.split(",")] if ids else []
        if r[_ATTEMPT + "id"] is not None:
            task["attempt_history"].append(
                {k[n:]: v for k, v in r.items() if k.startswith(_ATTEMPT)}
            )
    run["tasks"] = list(by_id.values())
    run["tasks_next_after"] = None
    if tasks_limit is not None and len(run["tasks"]) > tasks_limit:
        del run["tasks"][tasks_limit:]
        run["tasks_next_after"] = run["tasks"][-1]["id"]
    names = {t["id"]: t["name"] for t in by_id.values()}
    # On a page, a dependency may sit on another page: its name is read.
    elsewhere = {i for ids in dep_ids.values() for i in ids} - names.keys()
    if elsewhere:
        names.update(
            (r.id, r.name)
            for r in conn.execute(
                sa.select(tasks.c.id, tasks.c.name).where(tasks.c.id.in_(elsewhere))
            )
        )
    for t in run["tasks"]:
        t["depends_on"] = sorted(names[i] for i in dep_ids[t["id"]])
    linked = conn.execute(_LINKED, {"workflow_id": workflow_id}).all() if has_linked else []
    run["children"] = [
        {k: r._mapping[k] for k in ("id", "name", "status", "parent_task_id", "child_key")}
        for r in linked
        if r.parent_workflow_id == workflow_id
    ]
    run["reruns"] = [
        {"id": r.id, "name": r.name, "status": r.status}
        for r in linked
        if r.parent_workflow_id != workflow_id
    ]
    return run


def list_workflows(
    conn: sa.Connection,
    *,
    status: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    name_contains: str | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    handler: str | None = None,
) -> list[dict[str, Any]]:
    """The newest runs first; ``name_contains`` is a case-insensitive substring of the name,
    ``handler`` one a task of the run names."""
    q = sa.select(
        workflows.c.id,
        workflows.c.name,
        workflows.c.status,
        workflows.c.created_at,
        workflows.c.started_at,
        workflows.c.finished_at,
        workflows.c.error,
    ).order_by(workflows.c.id.desc())
    if status:
        q = q.where(workflows.c.status == status)
    if before_id:
        q = q.where(workflows.c.id < before_id)
    if name_contains:
        q = q.where(
            sa.func.lower(workflows.c.name).contains(name_contains.lower(), autoescape=True)
        )
    if created_after:
        q = q.where(workflows.c.created_at >= created_after)
    if created_before:
        q = q.where(workflows.c.created_at < created_before)
    if handler:
        q = q.where(
            sa.exists().where(tasks.c.workflow_id == workflows.c.id, tasks.c.handler == handler)
        )
    return [dict(r) for r in conn.execute(q.limit(limit)).mappings()]
