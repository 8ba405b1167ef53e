"""The PostgreSQL store. Its hot-path statements are the named queries of ``queries.sql``,
loaded once at import; each is one round trip doing what SQLite's twin (``kiln.store.sqlite``)
does in two to four, with the same guards.

``insert_run`` is the one statement outside the migrations' triggers that writes ``events``
rows (see its comment in ``queries.sql``).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import importlib.resources
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kiln.core import audit
from kiln.core.errors import DatabaseUnavailable
from kiln.store.base import InsertedRun, Statements, Store
from kiln.store.db import READY_CHANNEL, normalize_url, translate_errors
from kiln.store.schema import Json, Timestamp

T = TypeVar("T")
log = logging.getLogger("kiln.store")


def load_queries(text: str) -> dict[str, str]:
    """The ``-- name: x`` blocks of a queries file, by name, without the comment lines that
    open them, and with ``{other}`` replaced by the block ``other`` (for a predicate two
    statements share)."""
    blocks: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = chunk.partition("\n")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        blocks[name.strip()] = "\n".join(lines)
    for name, body in blocks.items():
        blocks[name] = re.sub(
            r"\{(\w+)\}", lambda m: blocks[m[1]] if m[1] in blocks else m[0], body
        )
    return blocks


QUERIES = load_queries(importlib.resources.files("kiln.store").joinpath("queries.sql").read_text())


def _query(name: str, *params: sa.BindParameter) -> sa.TextClause:
    return sa.text(QUERIES[name]).bindparams(*params)


_NOW = sa.bindparam("now", type_=Timestamp)
_LEASE = sa.bindparam("lease", type_=Timestamp)
MARK_QUEUED = _query("mark_queued", _NOW, _LEASE)
QUEUE_IS_IDLE = _query("queue_is_idle", _NOW)
INSERT_RUN = _query(
    "insert_run",
    sa.bindparam("definition", type_=Json),
    sa.bindparam("tasks", type_=Json),
    sa.bindparam("edges", type_=Json),
    _NOW,
    _LEASE,
)
INSERT_RUNS = _query(
    "insert_runs",
    sa.bindparam("runs", type_=Json),
    sa.bindparam("tasks", type_=Json),
    sa.bindparam("edges", type_=Json),
    _NOW,
)
CLAIM = _query("claim", _NOW, _LEASE)
FINISH = _query("finish", _NOW)
WAKE = _query("wake")
# Within PostgresStore._run: whether its transaction readied work (``notify_ready``), for the
# store to wake the controllers once it has committed.
_wake_after_commit: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("kiln_wake")


# The execution option that hands a one-statement transaction's actor to its statement
# (``PostgresStore._run`` behind a transaction pooler; see :func:`folded_actor`).
FOLDED_ACTOR = "kiln_folded_actor"


def folded_actor(conn: sa.Connection) -> str | None:
    """The actor a hot statement (``insert_run``, ``claim``) names itself for its events, as
    ``:actor``: set when it runs as a transaction of its own behind a transaction pooler,
    where no setting from before the statement may be trusted; None elsewhere, where the
    ``kiln.actor`` setting already holds it."""
    return conn.get_execution_options().get(FOLDED_ACTOR)


class PostgresStatements(Statements):
    def mark_queued(
        self, conn: sa.Connection, ids: Sequence[int], *, now: dt.datetime, lease: dt.datetime
    ) -> list[Any]:
        return list(conn.execute(MARK_QUEUED, {"ids": list(ids), "now": now, "lease": lease}))

    def queue_is_idle(
        self, conn: sa.Connection, *, now: dt.datetime, excluding: Sequence[int], cap: int
    ) -> bool:
        params = {"now": now, "excluding": list(excluding), "cap": cap}
        return bool(conn.execute(QUEUE_IS_IDLE, params).scalar())

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
        until, cap = lease if lease else (None, 0)
        got = conn.execute(
            INSERT_RUN,
            {
                "name": run["name"],
                "on_error": run["on_error"],
                "priority": run["priority"],
                "definition": run["definition"],
                "idempotency_key": run["idempotency_key"],
                "idempotency_fingerprint": run["idempotency_fingerprint"],
                "trace_context": run.get("trace_context"),
                "now": now,
                "tasks": [
                    {k: v for k, v in r.items() if k not in ("created_at", "ready_at")}
                    for r in task_rows
                ],
                "edges": [{"task": a, "dep": b} for a, b in edges],
                "lease": until,
                "cap": cap,
                "excluding": [],
                "notify": notify,
                "actor": folded_actor(conn),
            },
        ).all()
        if not got:
            return None, {}
        if got[0].wake:
            self.notify_ready(conn)
        return got[0].workflow_id, {r.name: (r.id, r.status) for r in got}

    def insert_runs(
        self,
        conn: sa.Connection,
        runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]], list[tuple[str, str]]]],
        *,
        now: dt.datetime,
        notify: bool,
    ) -> list[int | None]:
        skip = ("created_at", "ready_at", "direct")
        params = {
            "runs": [
                {"i": i, **{k: v for k, v in run.items() if k not in ("status", "created_at")}}
                for i, (run, _, _) in enumerate(runs)
            ],
            "tasks": [
                {"run": i, **{k: v for k, v in r.items() if k not in skip}}
                for i, (_, rows, _) in enumerate(runs)
                for r in rows
            ],
            "edges": [
                {"run": i, "task": a, "dep": b}
                for i, (_, _, edges) in enumerate(runs)
                for a, b in edges
            ],
            "now": now,
            "notify": notify,
        }
        rows = conn.execute(INSERT_RUNS, params).all()
        if rows and rows[0].wake:
            self.notify_ready(conn)
        return [r.id if r.created else None for r in rows]

    def claim(
        self,
        conn: sa.Connection,
        items: Sequence[tuple[int, int]],
        *,
        worker: str,
        now: dt.datetime,
        lease: dt.datetime,
    ) -> list[Any]:
        params = {
            "ids": [t for t, _ in items],
            "prev": [a - 1 for _, a in items],
            "worker": worker,
            "now": now,
            "lease": lease,
            "actor": folded_actor(conn),
        }
        return list(conn.execute(CLAIM, params))

    def finish(
        self,
        conn: sa.Connection,
        done: Sequence[tuple[int, int, Any, dt.datetime, dt.datetime]],
        *,
        now: dt.datetime,
    ) -> tuple[list[Any], list[int]]:
        params = {
            "ids": [d[0] for d in done],
            "attempts": [d[1] for d in done],
            "results": [json.dumps(d[2]) for d in done],
            "started": [d[3] for d in done],
            "finished": [d[4] for d in done],
            "now": now,
        }
        rows = conn.execute(FINISH, params).all()
        return [r for r in rows if r.kind == "done"], [r.id for r in rows if r.kind == "readied"]

    def notify_ready(self, conn: sa.Connection) -> None:
        # Sent once the transaction has committed (PostgresStore._run), not in it: see "wake"
        # in queries.sql. Outside the store's transactions, in this one.
        wanted = _wake_after_commit.get(None)
        if wanted is None:
            conn.execute(WAKE)
        else:
            wanted[0] = True

    def note_audit(
        self, conn: sa.Connection, *, actor: str | None = None, reason: str | None = None
    ) -> None:
        # Transaction-local settings; the event triggers read them (migration 0013).
        given = {k: v for k, v in (("actor", actor), ("reason", reason)) if v is not None}
        if given:
            calls = ", ".join(f"set_config('kiln.{k}', :{k}, true)" for k in given)
            conn.execute(sa.text(f"SELECT {calls}"), given)

    def insert_ignoring(self, table: sa.Table, *, key: list[str]) -> Any:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=key)

    def json_without(self, column: str, key: str) -> sa.TextClause:
        return sa.text(f"{column} - '{key}'")

    def seconds_between(self, start: Any, end: Any) -> sa.ColumnElement[float]:
        return sa.func.extract("epoch", end - start)  # type: ignore[return-value]  # numeric

    def greatest(self, *values: Any) -> sa.ColumnElement[Any]:
        return sa.func.greatest(*values)

    def among(self, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
        # ``= ANY(array)``: one parameter and one statement text for any number of values,
        # so nothing is rendered per execution and psycopg prepares it once.
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(column.type)))


class PostgresStore(Store):
    """``transaction_pooling``: connections go through a pooler in transaction mode (PgBouncer
    ``pool_mode=transaction``), so no state may outlive a transaction; ``listen_url`` is then
    a direct connection for LISTEN (default ``url``). ``prepare_threshold`` is psycopg's (None:
    never prepare server-side, which PgBouncer < 1.21 cannot route). docs/scale.md says more."""

    dialect = "postgresql"
    statements = PostgresStatements()
    wakes_by_listen = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        ping_after_s: float = 1.0,
        max_overflow: int | None = None,
        listen_url: str | None = None,
        transaction_pooling: bool = False,
        prepare_threshold: int | None = 5,
    ) -> None:
        self.listen_url = listen_url or url
        self.transaction_pooling = transaction_pooling
        self.engine = self.make_engine(
            url,
            pool_size=pool_size,
            ping_after_s=ping_after_s,
            max_overflow=max_overflow,
            transaction_pooling=transaction_pooling,
            prepare_threshold=prepare_threshold,
        )

    @classmethod
    def make_engine(
        cls,
        url: str,
        *,
        pool_size: int,
        ping_after_s: float,
        max_overflow: int | None = None,
        transaction_pooling: bool = False,
        prepare_threshold: int | None = 5,
    ) -> sa.Engine:
        """``ping_after_s``: a pooled connection idle longer than this is pinged before use
        (see :func:`_ping_after_idle`); ``0`` pings on every checkout. ``max_overflow``:
        connections opened beyond ``pool_size`` under load (None: ``pool_size`` more)."""
        engine = sa.create_engine(
            normalize_url(url),
            pool_size=pool_size,
            max_overflow=pool_size if max_overflow is None else max_overflow,
            pool_recycle=1800,
            connect_args={"prepare_threshold": prepare_threshold},
        )
        _ping_after_idle(engine, ping_after_s)
        if not transaction_pooling:
            _name_actor(engine)
        return engine

    def ready_listener(self) -> ReadyListener:
        return ReadyListener(self.listen_url)

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        """Reads run in autocommit: under READ COMMITTED each statement has its own snapshot
        in or out of a transaction, so BEGIN and ROLLBACK would only cost two round trips."""
        with translate_errors(), self.engine.connect() as conn:
            return fn(conn.execution_options(isolation_level="AUTOCOMMIT", kiln_readonly=True))

    def _run(self, fn: Callable[[sa.Connection], T], *, single: bool, reason: str | None) -> T:
        wanted = [False]
        token = _wake_after_commit.set(wanted)
        try:
            with translate_errors(), self.engine.connect() as conn:
                result = self._commit(conn, fn, single=single, reason=reason)
                if wanted[0]:
                    self._wake(conn)
                return result
        finally:
            _wake_after_commit.reset(token)

    def _wake(self, conn: sa.Connection) -> None:
        """Wake the controllers after a commit that readied work. Never raises: the work is
        committed, and a caller told otherwise would retry it; a lost wake-up only leaves the
        controllers to their next poll."""
        try:
            conn.execute(WAKE)
            conn.commit()
        except sa.exc.DBAPIError:
            log.warning("could not wake the controllers; they will poll", exc_info=True)

    def _commit(
        self,
        conn: sa.Connection,
        fn: Callable[[sa.Connection], T],
        *,
        single: bool,
        reason: str | None,
    ) -> T:
        """Run ``fn`` on ``conn`` and commit."""
        # Behind a transaction pooler the next transaction may run on another server
        # connection: each one names its actor ('' clears what another client's session may
        # have left), without a round trip of its own.
        actor = (_actor() or "") if self.transaction_pooling else None
        if single:
            # One statement is its own transaction: autocommit saves the BEGIN and COMMIT
            # trips. Its statement names the actor itself (insert_run and claim; insert_runs
            # writes no events).
            options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"}
            if actor is not None:
                options[FOLDED_ACTOR] = actor
            return fn(conn.execution_options(**options))
        given = {"kiln.actor": actor, "kiln.reason": reason}
        settings = {k: v for k, v in given.items() if v is not None}
        if not settings:
            with conn.begin():
                return fn(conn)
        # A longer transaction names them in the statement that begins it. The connection is
        # in autocommit so that psycopg sends no BEGIN of its own; this sends BEGIN, and
        # COMMIT or ROLLBACK, itself.
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(_begin_setting(conn, settings))
        try:
            result = fn(conn)
        except BaseException:
            with contextlib.suppress(sa.exc.DBAPIError):  # a dead connection is discarded
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
        return result


def _ping_after_idle(engine: sa.Engine, after_s: float) -> None:
    """Ping a pooled connection before use only when it sat idle for more than ``after_s``.

    ``pool_pre_ping`` pings on every checkout, which costs a round trip as long as a hot-path
    statement (0.4 ms on the benchmark machine) to catch connections a database restart
    killed. A connection that was in use less than ``after_s`` ago is trusted instead. If the
    database restarted within that window, the one statement that finds its connection dead
    fails with :class:`DatabaseUnavailable` (never half-applied: it did not run), and
    SQLAlchemy then recycles every connection the pool held from before the failure. Callers
    already handle that error (workers and controllers retry; the web answers 503)."""

    @sa.event.listens_for(engine.pool, "connect")
    def _fresh(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["kiln_used_at"] = time.monotonic()

    @sa.event.listens_for(engine.pool, "checkin")
    def _checkin(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        if record is not None:
            record.info["kiln_used_at"] = time.monotonic()

    @sa.event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        used_at = record.info.get("kiln_used_at")
        if used_at is not None and time.monotonic() - used_at <= after_s:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception:  # noqa: BLE001 - any error on "SELECT 1": not a usable connection
            alive = False
        if not alive:  # the pool discards it and checks out a new one
            raise sa.exc.DisconnectionError("pooled connection found dead by its ping")


def _begin_setting(conn: sa.Connection, settings: dict[str, str]) -> str:
    """``BEGIN`` and the transaction-local ``settings`` in one string, sent as one simple query
    (no parameters): one round trip where psycopg's own BEGIN and a ``set_config`` statement
    would take two. The values are quoted by psycopg, and their '%' doubled: ``exec_driver_sql``
    hands psycopg an empty parameter set, so it still reads placeholders."""
    from psycopg import sql

    driver = conn.connection.driver_connection
    calls = ", ".join(
        f"set_config({sql.Literal(k).as_string(driver)}, {sql.Literal(v).as_string(driver)}, true)"
        for k, v in settings.items()
    )
    return f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT {calls}".replace("%", "%%")


def _actor() -> str | None:
    """Who this thread acts as (``kiln.core.audit``): the innermost ``acting`` actor, else the
    process's."""
    return audit.scoped()[0] or audit.process_actor()


def _name_actor(engine: sa.Engine) -> None:
    """Give a connection taken from the pool the actor of who takes it (``kiln.core.audit``:
    the innermost ``acting`` actor, else the process's) as a session setting, only when it
    differs from the one it has: the events of the hot one-statement transactions (claim,
    finish, dispatch, submit) then say who made them without another round trip. Never
    behind a transaction pooler, where a session setting reaches other clients' transactions
    (``PostgresStore._run`` names the actor in each transaction there, in its BEGIN's round
    trip or in its one statement)."""

    @sa.event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        actor = _actor()
        if record.info.get("kiln_actor", "") == (actor or ""):
            return
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        try:
            dbapi_conn.execute("SELECT set_config('kiln.actor', %s, false)", (actor or "",))
        except Exception as exc:  # the pool discards it and checks out another
            raise sa.exc.DisconnectionError("could not name the actor on a connection") from exc
        finally:
            dbapi_conn.autocommit = autocommit
        record.info["kiln_actor"] = actor or ""


class ReadyListener:
    """A dedicated autocommit psycopg connection LISTENing for ready tasks, to ``url`` (direct:
    a transaction pooler would hand its session to others between notifications). Its driver errors
    (the server restarting, say) surface as :class:`DatabaseUnavailable`, which the loop
    waits out like any other outage."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._errors = psycopg.Error
        url = (
            sa.make_url(normalize_url(url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        with self._translated():
            self.conn = psycopg.connect(url, autocommit=True)
            self.conn.execute(f"LISTEN {READY_CHANNEL}")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    def wait(self, timeout: float) -> None:
        """Return when notified or after ``timeout`` seconds."""
        with self._translated():
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                break
            # Drain whatever else arrived: one pass handles all of it.
            for _ in self.conn.notifies(timeout=0.0, stop_after=1000):
                pass

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
