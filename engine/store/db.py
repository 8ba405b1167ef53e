"""Connections: one place that knows the dialects Kiln runs on and translates driver errors."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from typing import overload

import sqlalchemy as sa
from kiln.core.errors import DatabaseUnavailable

READY_CHANNEL = "kiln_ready"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and pick psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 5, ping_after_s: float = 1.0) -> sa.Engine:
    """``ping_after_s``: on PostgreSQL, a pooled connection idle longer than this is pinged
    before use (see :func:`_ping_after_idle`); ``0`` pings on every checkout."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _serialise_sqlite_writers(engine)
        return engine
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    _ping_after_idle(engine, ping_after_s)
    return engine


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


def _serialise_sqlite_writers(engine: sa.Engine) -> None:
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
        # Reads (``Kiln.read``) begin deferred: under WAL they never wait for a writer, so a
        # read made while the same thread holds a write transaction cannot deadlock on it.
        readonly = conn.get_execution_options().get("kiln_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_postgres(conn: sa.Connection | sa.Engine) -> bool:
    return conn.dialect.name == "postgresql"


def notify_ready(conn: sa.Connection) -> None:
    """Wake controllers waiting on LISTEN (delivered when the transaction commits)."""
    if is_postgres(conn):
        conn.execute(sa.text(f"NOTIFY {READY_CHANNEL}"))


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn "cannot reach the database" driver errors into :class:`DatabaseUnavailable`."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if "locked" in str(exc).lower():
            raise
        raise DatabaseUnavailable(f"database unavailable: {exc.orig}") from exc


@overload
def aware(value: dt.datetime) -> dt.datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; Kiln stores UTC everywhere, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
