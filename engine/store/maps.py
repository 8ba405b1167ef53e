"""Map expansion: a ready map task (``tasks.map_over``, see ``kiln.core.mapping``) becomes one
task per item of the list its upstream result holds, in one transaction per map task.

The controller calls it each pass (``Kiln.expand_maps``). The map task is locked and leaves
``ready`` by one guarded statement, in the same transaction as the items are written, so a
crash in the middle leaves it ``ready`` with no item (the next pass expands it), and a second
controller finds it no longer ready and writes nothing; the unique index on
``(mapped_from, map_index)`` makes a duplicate item impossible besides. What an item's end does
to its map task is in ``kiln.store.map_items``. Functions ending in ``_txn`` never commit.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kiln.core.mapping import MapError, check_items, item_name, item_params, map_source
from kiln.core.states import TaskStatus
from kiln.core.templating import ReferenceError_, find_references, resolve
from kiln.store.clauses import run_is_active
from kiln.store.db import utcnow
from kiln.store.dependents import count_down_dependents_txn
from kiln.store.dialects import notify_ready
from kiln.store.schema import tasks
from kiln.store.tasks import propagate_failure_txn
from kiln.store.workflows import settle_workflows_txn


def ready_map_tasks(conn: sa.Connection, *, limit: int = 100) -> list[int]:
    """Ids of map tasks whose dependencies succeeded (``ready``), of runs not paused or over,
    oldest first."""
    return list(
        conn.execute(
            sa.select(tasks.c.id)
            .where(tasks.c.status == TaskStatus.READY, tasks.c.map_over.is_not(None))
            .where(run_is_active())
            .order_by(tasks.c.id)
            .limit(limit)
        ).scalars()
    )


def expand_map_txn(conn: sa.Connection, map_id: int, *, max_items: int) -> str | None:
    """Expand map task ``map_id`` if it is still ready:

    * a list of items: ``ready -> waiting``, and one ``ready`` task per item (``Name[i]``,
      with ``mapped_from`` and ``map_index``), controllers woken;
    * an empty list: ``ready -> succeeded`` with result ``[]``, its dependents counted down;
    * no list (the reference does not resolve, or names no list, or more than
      ``max_items``): ``ready -> failed``, and the failure propagates as a task's would.

    Returns ``"waiting"``, ``"succeeded"`` or ``"failed"``; None when the task was no longer
    ready (another controller expanded it, or the run was cancelled)."""
    m = conn.execute(
        sa.select(tasks)
        .where(tasks.c.id == map_id, tasks.c.status == TaskStatus.READY)
        .with_for_update()
    ).first()
    if m is None or m.map_over is None:
        return None
    now = utcnow()
    try:
        results = _upstream_results(conn, m)
        source = map_source(m.map_over) or ""  # parse_definition checked it is one reference
        listed = resolve(m.map_over, {source: results[source]} if source in results else {})
        items = check_items(listed, source=m.map_over.strip("{} "), max_items=max_items)
        rows = [_item_row(m, i, value, now, results) for i, value in enumerate(items)]
    except (MapError, ReferenceError_) as exc:
        error = str(exc)
        if not _leave_ready(conn, m.id, TaskStatus.FAILED, error=error, finished_at=now):
            return None
        propagate_failure_txn(conn, m.id, m.workflow_id, f"task {m.name!r} failed: {error}")
        settle_workflows_txn(conn, [m.workflow_id])
        return TaskStatus.FAILED
    if not items:
        if not _leave_ready(
            conn, m.id, TaskStatus.SUCCEEDED, result=[], started_at=now, finished_at=now
        ):
            return None
        if count_down_dependents_txn(conn, [m.id], now=now):
            notify_ready(conn)
        settle_workflows_txn(conn, [m.workflow_id])
        return TaskStatus.SUCCEEDED
    reason = f"running {len(items)} mapped item{'s' if len(items) != 1 else ''}"
    if not _leave_ready(conn, m.id, TaskStatus.WAITING, waiting_reason=reason, started_at=now):
        return None
    # An executemany without RETURNING: psycopg pipelines one prepared INSERT (SQLAlchemy's
    # multi-row "insertmanyvalues", used with RETURNING, was 5x slower parsing the long text).
    conn.execute(tasks.insert(), rows)
    notify_ready(conn)
    return TaskStatus.WAITING


def _upstream_results(conn: sa.Connection, m: Any) -> dict[str, Any]:
    """Results of the succeeded tasks the map task names: its list's and its params'."""
    names = sorted({map_source(m.map_over) or "", *find_references(m.params)} - {""})
    return {
        row.name: row.result
        for row in conn.execute(
            sa.select(tasks.c.name, tasks.c.result).where(
                tasks.c.workflow_id == m.workflow_id,
                tasks.c.name.in_(names),
                tasks.c.status == TaskStatus.SUCCEEDED,
            )
        )
    }


def _leave_ready(conn: sa.Connection, map_id: int, target: TaskStatus, **values: Any) -> bool:
    """The one guarded transition out of ``ready`` for a map task."""
    changed = conn.execute(
        tasks.update()
        .where(tasks.c.id == map_id, tasks.c.status == TaskStatus.READY)
        .values({"waiting_reason": None, **values, "status": target})
        .returning(tasks.c.id)
    ).first()
    return changed is not None


def _item_row(m: Any, index: int, value: Any, now: Any, results: dict[str, Any]) -> dict[str, Any]:
    return {
        "workflow_id": m.workflow_id,
        "name": item_name(m.name, index),
        "handler": m.handler,
        "model_type": m.model_type,
        "params": item_params(m.params, value, index, results),
        "status": TaskStatus.READY,
        "priority": m.priority,
        "max_attempts": m.max_attempts,
        "timeout_s": m.timeout_s,
        "retry": m.retry,
        "queue": m.queue,
        "deps_remaining": 0,
        "created_at": now,
        "ready_at": now,
        "mapped_from": m.id,
        "map_index": index,
    }
