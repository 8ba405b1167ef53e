"""The SQLite store (the embedded mode): its statements are SQLAlchemy Core, the twins of
PostgreSQL's named queries in ``queries.sql``, with the same guards. Where PostgreSQL needs one
statement SQLite takes two to four, run in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from kiln.core.states import TaskStatus, WorkflowStatus
from kiln.store.base import InsertedRun, Statements, Store
from kiln.store.clauses import DISPATCHABLE, run_is_active, taken_back
from kiln.store.db import normalize_url
from kiln.store.dependents import count_down_dependents_txn
from kiln.store.schema import Json, Timestamp, task_attempts, task_dependencies, tasks, workflows


class SqliteStatements(Statements):
    def mark_queued(
        self, conn: sa.Connection, ids: Sequence[int], *, now: dt.datetime, lease: dt.datetime
    ) -> list[Any]:
        rows = conn.execute(
            tasks.update()
            .where(
                tasks.c.id.in_(list(ids)),
                tasks.c.status.in_(DISPATCHABLE),
                tasks.c.map_over.is_(None),  # a map task is expanded (kiln.store.maps)
            )
            .values(
                status=TaskStatus.QUEUED,
                queued_at=now,
                lease_expires_at=lease,
                dispatch_count=tasks.c.dispatch_count + 1,
                not_before=None,
                waiting_reason=None,
            )
            .returning(
                tasks.c.id, tasks.c.attempts, tasks.c.workflow_id, tasks.c.model_type, tasks.c.queue
            )
        ).all()
        run_ids = sorted({r.workflow_id for r in rows})
        if run_ids:
            conn.execute(
                workflows.update()
                .where(workflows.c.id.in_(run_ids), workflows.c.status == WorkflowStatus.PENDING)
                .values(status=WorkflowStatus.RUNNING, started_at=now)
            )
        return list(rows)

    def queue_is_idle(
        self, conn: sa.Connection, *, now: dt.datetime, excluding: Sequence[int], cap: int
    ) -> bool:
        waiting = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.status.in_(DISPATCHABLE),
                sa.or_(tasks.c.not_before.is_(None), tasks.c.not_before <= now),
                run_is_active(),
            )
            .limit(1)
        )
        if excluding:
            waiting = waiting.where(tasks.c.id.not_in(list(excluding)))
        in_flight = (
            sa.select(tasks.c.id).where(tasks.c.status == TaskStatus.QUEUED).limit(cap).subquery()
        )
        row = conn.execute(
            sa.select(
                sa.exists(waiting).label("waiting"),
                sa.select(sa.func.count())
                .select_from(in_flight)
                .scalar_subquery()
                .label("in_flight"),
            )
        ).one()
        return not row.waiting and row.in_flight < cap

    def insert_run(
        self,
        conn: sa.Connection,
        run: dict[str, Any],
        task_rows: list[dict[str, Any]],
        edges: list[tuple[str, str]],
        *,
        now: dt.datetime,
        notify: bool,
        lease: tuple[dt.datetime, int] | None,
    ) -> InsertedRun:
        direct = [r["name"] for r in task_rows if r["direct"]]
        idle = bool(lease and direct) and self.queue_is_idle(
            conn, now=now, excluding=(), cap=lease[1] if lease else 0
        )
        if run["idempotency_key"] is not None:
            wf_id = conn.execute(
                self.insert_ignoring(workflows, key=["idempotency_key"])
                .values(run)
                .returning(workflows.c.id)
            ).scalar()
            if wf_id is None:
                return None, {}
        else:
            wf_id = conn.execute(
                workflows.insert().values(run).returning(workflows.c.id)
            ).scalar_one()
        ids = conn.execute(
            tasks.insert().returning(tasks.c.id, sort_by_parameter_order=True),
            [
                {"workflow_id": wf_id, **{k: v for k, v in r.items() if k != "direct"}}
                for r in task_rows
            ],
        ).scalars()
        by_name = {r["name"]: (i, r["status"]) for r, i in zip(task_rows, ids, strict=True)}
        if edges:
            conn.execute(
                task_dependencies.insert(),
                [{"task_id": by_name[a][0], "depends_on_id": by_name[b][0]} for a, b in edges],
            )
        if idle and lease:
            leased = self.mark_queued(
                conn, [by_name[n][0] for n in direct], now=now, lease=lease[0]
            )
            for r in leased:
                name = next(n for n in direct if by_name[n][0] == r.id)
                by_name[name] = (r.id, TaskStatus.QUEUED)
        elif notify:
            self.notify_ready(conn)
        return wf_id, by_name

    def insert_runs(
        self,
        conn: sa.Connection,
        runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, str]]]],
        *,
        now: dt.datetime,
        notify: bool,
    ) -> list[int | None]:
        # One process writes at a time and a statement costs no round trip: run by run.
        return [
            self.insert_run(conn, run, rows, edges, now=now, notify=notify, lease=None)[0]
            for run, rows, edges in runs
        ]

    def claim(
        self,
        conn: sa.Connection,
        items: Sequence[tuple[int, int]],
        *,
        worker: str,
        now: dt.datetime,
        lease: dt.datetime,
    ) -> list[Any]:
        leased = [
            sa.tuple_(tasks.c.id, tasks.c.attempts).in_([(t, a - 1) for t, a in items]),
            tasks.c.status == TaskStatus.QUEUED,
        ]
        of_paused_run = sa.exists().where(
            workflows.c.id == tasks.c.workflow_id, workflows.c.status == WorkflowStatus.PAUSED
        )
        # A lease that committed after its run was paused goes back to ready (see "claim" in
        # queries.sql); checked first so a task takes exactly one of the two updates.
        conn.execute(tasks.update().where(*leased, of_paused_run).values(taken_back(now)))
        rows = conn.execute(
            tasks.update()
            .where(*leased, ~of_paused_run)
            .values(
                status=TaskStatus.RUNNING,
                attempts=tasks.c.attempts + 1,
                lease_owner=worker,
                lease_expires_at=lease,
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
                tasks.c.retry,
                tasks.c.resumes,
                tasks.c.state,
                sa.select(workflows.c.trace_context)
                .where(workflows.c.id == tasks.c.workflow_id)
                .scalar_subquery()
                .label("trace_context"),
            )
        ).all()
        if rows:
            conn.execute(
                task_attempts.insert(),
                [
                    {"task_id": r.id, "attempt": r.attempts, "worker": worker, "started_at": now}
                    for r in rows
                ],
            )
        return list(rows)

    def finish(
        self,
        conn: sa.Connection,
        done: Sequence[tuple[int, int, Any, dt.datetime, dt.datetime]],
        *,
        now: dt.datetime,
    ) -> tuple[list[Any], list[int]]:
        params: dict[str, Any] = {}
        for k, (i, a, r, s, f) in enumerate(done):
            params |= {f"i{k}": i, f"a{k}": a, f"r{k}": r, f"s{k}": s, f"f{k}": f}
        finished = list(conn.execute(_finish_sql(len(done)), params))
        ids = {r.id for r in finished}
        closed = [d for d in done if d[0] in ids]
        if closed:
            conn.execute(
                task_attempts.update()
                .where(
                    sa.tuple_(task_attempts.c.task_id, task_attempts.c.attempt).in_(
                        [(i, a) for i, a, *_ in closed]
                    ),
                    task_attempts.c.outcome == "running",
                )
                .values(outcome=TaskStatus.SUCCEEDED, finished_at=closed[0][4])
            )
        return finished, count_down_dependents_txn(conn, ids, now=now)

    def notify_ready(self, conn: sa.Connection) -> None:
        """Nothing to do: SQLite's controllers poll."""

    def insert_ignoring(self, table: sa.Table, *, key: list[str]) -> Any:
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=key)

    def json_without(self, column: str, key: str) -> sa.TextClause:
        return sa.text(f"json_remove({column}, '$.{key}')")

    def seconds_between(self, start: Any, end: Any) -> sa.ColumnElement[float]:
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0

    def greatest(self, *values: Any) -> sa.ColumnElement[Any]:
        return sa.func.max(*values)


@functools.lru_cache(maxsize=128)
def _finish_sql(n: int) -> sa.TextClause:
    """One statement that finishes ``n`` tasks, running -> succeeded fenced by attempt.
    (SQLite names the columns of a VALUES list column1, column2, ...: no Core construct
    renders that, so this one is text.)"""
    rows = ", ".join(f"(:i{k}, :a{k}, :r{k}, :s{k}, :f{k})" for k in range(n))
    sql = sa.text(
        f"UPDATE tasks SET status = '{TaskStatus.SUCCEEDED}', result = v.column3, "
        "started_at = v.column4, finished_at = v.column5, lease_owner = NULL, "
        "lease_expires_at = NULL, progress = 1.0, error = NULL "
        f"FROM (VALUES {rows}) AS v "
        "WHERE tasks.id = v.column1 AND tasks.attempts = v.column2 "
        f"AND tasks.status = '{TaskStatus.RUNNING}' "
        "RETURNING tasks.id, tasks.workflow_id, tasks.mapped_from"
    )
    params: list[sa.BindParameter] = []
    for k in range(n):
        params += [
            sa.bindparam(f"r{k}", type_=Json),
            sa.bindparam(f"s{k}", type_=Timestamp),
            sa.bindparam(f"f{k}", type_=Timestamp),
        ]
    return sql.bindparams(*params)


class SqliteStore(Store):
    dialect = "sqlite"
    statements = SqliteStatements()

    @classmethod
    def make_engine(cls, url: str, *, pool_size: int, ping_after_s: float) -> sa.Engine:
        engine = sa.create_engine(
            normalize_url(url),
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _serialise_writers(engine)
        return engine


def _serialise_writers(engine: sa.Engine) -> None:
    """SQLite has one writer at a time. Taking the write lock at BEGIN (``BEGIN IMMEDIATE``)
    makes concurrent transactions queue on ``busy_timeout`` instead of failing half-way with
    "database is locked" when a reader tries to upgrade; WAL lets readers run meanwhile."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Reads (``Store.read``) begin deferred: under WAL they never wait for a writer, so a
        # read made while the same thread holds a write transaction cannot deadlock on it.
        readonly = conn.get_execution_options().get("kiln_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
