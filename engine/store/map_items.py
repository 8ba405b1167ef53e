"""What a mapped item's end does to its map task (``kiln.core.mapping``): the last item to
succeed settles it (``waiting -> succeeded``, its result the items' results in item order), an
item that failed for good fails it (``waiting -> failed``). ``kiln.store.tasks`` calls these
when it finishes or fails a task; ``kiln.store.maps`` expands map tasks. Functions ending in
``_txn`` never commit."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from kiln.core.states import TASK_NOT_STARTED, TaskStatus
from kiln.store.db import utcnow
from kiln.store.dependents import count_down_dependents_txn
from kiln.store.dialects import notify_ready
from kiln.store.schema import tasks

NOT_STARTED = [str(s) for s in TASK_NOT_STARTED]


def settle_maps_txn(conn: sa.Connection, map_ids: Iterable[int]) -> list[int]:
    """Map tasks ``map_ids`` whose items all succeeded go ``waiting -> succeeded`` with the
    items' results in item order, and their dependents are counted down (controllers are
    woken for those made ready, whose ids are returned). Others are left alone."""
    ids = sorted(set(map_ids))
    if not ids:
        return []
    # Two workers finishing a map's last two items concurrently would each still see the
    # other's item running, and neither would settle the map. Locking the map rows first (in
    # id order, against deadlocks) serialises them: the second to get the lock re-reads under
    # READ COMMITTED and sees the first one's committed item (as settle_workflows_txn does).
    conn.execute(
        sa.select(tasks.c.id)
        .where(tasks.c.id.in_(ids), tasks.c.status == TaskStatus.WAITING)
        .order_by(tasks.c.id)
        .with_for_update()
    )
    item = tasks.alias("item")
    unfinished = sa.exists().where(
        item.c.mapped_from == tasks.c.id, item.c.status != TaskStatus.SUCCEEDED
    )
    complete = conn.execute(
        sa.select(tasks.c.id).where(
            tasks.c.id.in_(ids), tasks.c.status == TaskStatus.WAITING, ~unfinished
        )
    ).scalars()
    now = utcnow()
    settled = []
    for map_id in complete:
        results = conn.execute(
            sa.select(item.c.result).where(item.c.mapped_from == map_id).order_by(item.c.map_index)
        ).scalars()
        changed = conn.execute(
            tasks.update()
            .where(tasks.c.id == map_id, tasks.c.status == TaskStatus.WAITING)
            .values(
                status=TaskStatus.SUCCEEDED,
                result=list(results),
                finished_at=now,
                waiting_reason=None,
                progress=1.0,
                error=None,
            )
            .returning(tasks.c.id)
        ).first()
        if changed is not None:
            settled.append(map_id)
    readied = count_down_dependents_txn(conn, settled, now=now)
    if readied:
        notify_ready(conn)
    return readied


def fail_map_of_item_txn(conn: sa.Connection, task_id: int) -> tuple[int, str] | None:
    """If ``task_id`` is a mapped item that just failed for good: its map task goes
    ``waiting -> failed`` (error "item Agg[3] failed: ...") and the map's items not started
    yet are cancelled. Returns ``(map task id, error to propagate)``, or None when
    ``task_id`` is no item or its map task had failed or ended already."""
    row = conn.execute(
        sa.select(tasks.c.name, tasks.c.mapped_from, tasks.c.error).where(tasks.c.id == task_id)
    ).first()
    if row is None or row.mapped_from is None:
        return None
    now = utcnow()
    error = f"item {row.name} failed: {row.error}"
    failed = conn.execute(
        tasks.update()
        .where(tasks.c.id == row.mapped_from, tasks.c.status == TaskStatus.WAITING)
        .values(status=TaskStatus.FAILED, finished_at=now, error=error, waiting_reason=None)
        .returning(tasks.c.name)
    ).first()
    if failed is None:
        return None
    conn.execute(
        tasks.update()
        .where(tasks.c.mapped_from == row.mapped_from, tasks.c.status.in_(NOT_STARTED))
        .values(
            status=TaskStatus.CANCELLED,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error=f"not run: {error}",
        )
    )
    return row.mapped_from, f"task {failed.name!r} failed: {error}"
