"""The one interface over Kiln's databases: a :class:`Store` owns the connection pool and the
transactions, and its :class:`Statements` are the few statements each database spells its own
way. ``kiln.store.postgres`` and ``kiln.store.sqlite`` implement both, side by side; a new
transition that needs its own spelling is added to :class:`Statements` and written in each.
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa

from kiln.core import audit
from kiln.store.db import translate_errors

T = TypeVar("T")
RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock_detected, serialization_failure
# Where the ``kiln.migrations`` package is installed (the repository's migrations/ folder),
# found without importing it.
MIGRATIONS_DIR = Path(importlib.util.find_spec("kiln.migrations").origin).parent  # type: ignore[arg-type,union-attr]

# What ``Statements.insert_run`` returns: the run's id (None when its idempotency key was used
# already and nothing was written) and ``{task name: (id, status)}``.
InsertedRun = tuple[int | None, dict[str, tuple[int, str]]]


class Statements(abc.ABC):
    """The statements that differ per database. Each takes the caller's connection and never
    commits; guards and results are the same on every database."""

    @abc.abstractmethod
    def mark_queued(
        self, conn: sa.Connection, ids: Sequence[int], *, now: dt.datetime, lease: dt.datetime
    ) -> list[Any]:
        """ready|retrying -> queued for ``ids`` (leased until ``lease``), and their runs
        pending -> running. Rows ``(id, attempts, workflow_id, model_type)`` of those leased."""

    @abc.abstractmethod
    def queue_is_idle(
        self, conn: sa.Connection, *, now: dt.datetime, excluding: Sequence[int], cap: int
    ) -> bool:
        """No dispatchable task (other than ``excluding``) waits for a controller, and fewer
        than ``cap`` tasks are sent but not yet claimed."""

    @abc.abstractmethod
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
        """Write a run, its tasks (each with ``direct``) and edges ``(task, dependency)``.

        ``lease=(until, cap)``: if the queue is idle (:meth:`queue_is_idle` with ``cap``),
        the ``direct`` tasks are written leased ``queued`` until ``until`` and the run
        ``running``. Otherwise, with ``notify``, controllers are woken."""

    @abc.abstractmethod
    def insert_runs(
        self,
        conn: sa.Connection,
        runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, str]]]],
        *,
        now: dt.datetime,
        notify: bool,
    ) -> list[int | None]:
        """Write many runs, each ``(run, task_rows, edges)`` as for :meth:`insert_run`, none
        leased; with ``notify``, controllers are woken. The id of each run in order, None for
        one whose idempotency key was used already (before, or earlier in ``runs``)."""

    @abc.abstractmethod
    def claim(
        self,
        conn: sa.Connection,
        items: Sequence[tuple[int, int]],
        *,
        worker: str,
        now: dt.datetime,
        lease: dt.datetime,
    ) -> list[Any]:
        """queued -> running for each ``(task_id, attempt)`` still queued at ``attempt - 1``,
        the attempt recorded in ``task_attempts``; a task whose run is paused goes back to
        ready instead. Rows of the claimed tasks (their columns ``ClaimedTask`` needs)."""

    @abc.abstractmethod
    def finish(
        self,
        conn: sa.Connection,
        done: Sequence[tuple[int, int, Any, dt.datetime, dt.datetime]],
        *,
        now: dt.datetime,
    ) -> tuple[list[Any], list[int]]:
        """running -> succeeded for ``(task_id, attempt, result, started, finished)`` fenced
        by attempt, their attempts closed, and their dependents counted down, those reaching
        zero going pending -> ready. Returns rows ``(id, workflow_id)`` of the tasks finished
        and the ids made ready."""

    def note_audit(
        self, conn: sa.Connection, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        """Name who makes, and why, the changes of the rest of this transaction, for the
        ``events`` the triggers write (None: leave as it is). SQLite's triggers cannot read
        it: there this does nothing, and ``events.actor`` and ``reason`` stay NULL."""
        return None

    @abc.abstractmethod
    def notify_ready(self, conn: sa.Connection) -> None:
        """Wake controllers waiting for ready work (delivered when the transaction commits)."""

    # --- expressions -------------------------------------------------------------------

    @abc.abstractmethod
    def insert_ignoring(self, table: sa.Table, *, key: list[str]) -> Any:
        """``INSERT ... ON CONFLICT (key) DO NOTHING`` for ``table``; add values, returning."""

    @abc.abstractmethod
    def json_without(self, column: str, key: str) -> sa.TextClause:
        """The JSON object in ``column`` without its top-level ``key``."""

    @abc.abstractmethod
    def seconds_between(self, start: Any, end: Any) -> sa.ColumnElement[float]:
        """``end - start`` in seconds."""

    @abc.abstractmethod
    def greatest(self, *values: Any) -> sa.ColumnElement[Any]:
        """The largest of ``values``."""

    def among(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        """``column`` is one of the list bound as ``name``, for a statement built once and run
        with any number of values: an expanding ``IN`` (one parameter per value, rendered at
        each execution)."""
        return column.in_(sa.bindparam(name, expanding=True))


class Store(abc.ABC):
    """A handle on one Kiln database: its pool, its transactions, its schema. Thread-safe;
    built by ``kiln.store.dialects.open_store``, one per process."""

    dialect: ClassVar[str]
    statements: ClassVar[Statements]
    # Controllers can sleep on LISTEN and be woken when work becomes ready.
    wakes_by_listen: ClassVar[bool] = False

    def __init__(self, url: str, *, pool_size: int = 5, ping_after_s: float = 1.0) -> None:
        self.engine = self.make_engine(url, pool_size=pool_size, ping_after_s=ping_after_s)

    @classmethod
    @abc.abstractmethod
    def make_engine(cls, url: str, *, pool_size: int, ping_after_s: float) -> sa.Engine:
        """The SQLAlchemy engine, set up for this database."""

    def close(self) -> None:
        self.engine.dispose()

    def ready_listener(self) -> Any:
        """A listener whose ``wait(timeout)`` returns early when work becomes ready, on a
        database that can say so (``wakes_by_listen``); None elsewhere."""
        return None

    def txn(
        self, fn: Callable[[sa.Connection], T], *, attempts: int = 8, single: bool = False
    ) -> T:
        """Run ``fn`` in a transaction and commit; retry it on deadlock/serialization errors.

        ``single``: ``fn`` makes one statement that changes anything (reads aside); a store
        may then run it without an explicit transaction (PostgreSQL saves BEGIN and COMMIT).
        Inside ``kiln.core.audit.acting`` with a reason, the transaction first names it
        (:meth:`Statements.note_audit`), so it is not ``single`` then; an actor the store
        gives the connection when it takes it from the pool, at no cost on the hot path
        (PostgreSQL behind a transaction pooler: in the transaction's first query)."""
        _, reason = audit.scoped()
        single = single and not reason
        for attempt in range(1, attempts + 1):
            try:
                return self._run(fn, single=single, reason=reason)
            except sa.exc.DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code not in RETRYABLE_SQLSTATES or attempt == attempts:
                    raise
                time.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    def _run(self, fn: Callable[[sa.Connection], T], *, single: bool, reason: str | None) -> T:
        with translate_errors(), self.engine.begin() as conn:
            if reason:
                self.statements.note_audit(conn, reason=reason)
            return fn(conn)

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` on a connection that only reads, without committing anything."""
        with translate_errors(), self.engine.connect() as conn:
            return fn(conn.execution_options(kiln_readonly=True))

    def upgrade(self) -> None:
        """Migrate the database to the newest schema (what ``kiln db upgrade`` does)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["configure_logging"] = False
        with translate_errors(), self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
