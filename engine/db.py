"""Connections: one place that knows the dialects Kiln runs on and translates driver errors."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

from engine.errors import DatabaseUnavailable

READY_CHANNEL = "kiln_ready"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and pick psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
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
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


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


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; Kiln stores UTC everywhere, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
