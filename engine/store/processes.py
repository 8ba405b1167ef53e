"""Kiln's own processes (workers, controllers, web) heartbeat into ``processes`` so that
health checks and operators can see who is alive."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from typing import Any

import sqlalchemy as sa

from kiln.store.db import aware, utcnow
from kiln.store.schema import processes


def new_process_id(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def register_process_txn(
    conn: sa.Connection, process_id: str, kind: str, *, concurrency: int = 1, info: Any = None
) -> None:
    now = utcnow()
    conn.execute(
        processes.insert().values(
            id=process_id,
            kind=kind,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            concurrency=concurrency,
            started_at=now,
            heartbeat_at=now,
            info=info,
        )
    )


def heartbeat_process_txn(conn: sa.Connection, process_id: str) -> bool:
    return (
        conn.execute(
            processes.update()
            .where(processes.c.id == process_id, processes.c.stopped_at.is_(None))
            .values(heartbeat_at=utcnow())
        ).rowcount
        == 1
    )


def stop_process_txn(conn: sa.Connection, process_id: str) -> None:
    conn.execute(processes.update().where(processes.c.id == process_id).values(stopped_at=utcnow()))


def live_processes(conn: sa.Connection, kind: str, *, stale_after_s: float) -> list[Any]:
    """Processes of ``kind`` that heartbeated within ``stale_after_s`` and did not stop."""
    cutoff = utcnow().timestamp() - stale_after_s
    rows = conn.execute(
        sa.select(processes).where(processes.c.kind == kind, processes.c.stopped_at.is_(None))
    ).all()
    return [r for r in rows if aware(r.heartbeat_at).timestamp() >= cutoff]


def last_worker_heartbeat(conn: sa.Connection) -> dt.datetime | None:
    """When a worker process last proved it was alive (its latest heartbeat, whether it has
    stopped since or not); ``None`` if no worker ever registered."""
    seen = conn.execute(
        sa.select(sa.func.max(processes.c.heartbeat_at)).where(processes.c.kind == "worker")
    ).scalar()
    return aware(seen)


def recent_processes(conn: sa.Connection, *, horizon_s: float) -> list[dict[str, Any]]:
    """Processes that did not say they stopped and heartbeated within ``horizon_s``, by kind
    then start time (one killed without a chance to say so stays listed until then)."""
    since = utcnow() - dt.timedelta(seconds=horizon_s)
    rows = conn.execute(
        sa.select(processes)
        .where(processes.c.stopped_at.is_(None), processes.c.heartbeat_at >= since)
        .order_by(processes.c.kind, processes.c.started_at)
    ).mappings()
    return [dict(r) for r in rows]


def process_heartbeats(conn: sa.Connection) -> list[Any]:
    """``(kind, heartbeat_at, concurrency)`` of every process that did not say it stopped."""
    return list(
        conn.execute(
            sa.select(processes.c.kind, processes.c.heartbeat_at, processes.c.concurrency).where(
                processes.c.stopped_at.is_(None)
            )
        ).all()
    )
