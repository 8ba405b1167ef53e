"""Which store serves a database: :func:`open_store` picks it once from the URL, and
:func:`statements` gives a connection's statements to the ``*_txn`` functions, which then need
no branch of their own. The only place that maps a dialect name to its store."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kiln.store.base import Statements, Store
from kiln.store.db import normalize_url
from kiln.store.postgres import PostgresStore
from kiln.store.sqlite import SqliteStore

STORES: dict[str, type[Store]] = {s.dialect: s for s in (PostgresStore, SqliteStore)}


def open_store(
    url: str, *, pool_size: int = 5, ping_after_s: float = 1.0, **postgres: Any
) -> Store:
    """The store for the database at ``url`` (``postgres://``, ``postgresql://`` and
    ``sqlite://`` URLs). ``ping_after_s``: on PostgreSQL, a pooled connection idle longer
    than this is pinged before use; ``0`` pings on every checkout. ``postgres``: options
    only PostgreSQL's store takes (:class:`PostgresStore`: pooling, the listen URL)."""
    dialect = sa.engine.make_url(normalize_url(url)).get_dialect().name
    if dialect not in STORES:
        raise ValueError(f"Kiln runs on PostgreSQL or SQLite, not {dialect}")
    if dialect == PostgresStore.dialect:
        return PostgresStore(url, pool_size=pool_size, ping_after_s=ping_after_s, **postgres)
    return STORES[dialect](url, pool_size=pool_size, ping_after_s=ping_after_s)


def statements(conn: sa.Connection | sa.Engine) -> Statements:
    """The statements of the database ``conn`` is connected to."""
    return STORES[conn.dialect.name].statements


# The expressions spelled differently per database, for queries built elsewhere in the store.


def insert_ignoring(conn: sa.Connection, table: sa.Table, *, key: list[str]) -> Any:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` for ``table``; add values and returning."""
    return statements(conn).insert_ignoring(table, key=key)


def json_without(conn: sa.Connection, column: str, key: str) -> sa.TextClause:
    """The JSON object in ``column`` without its top-level ``key``."""
    return statements(conn).json_without(column, key)


def seconds_between(conn: sa.Connection, start: Any, end: Any) -> sa.ColumnElement[float]:
    """``end - start`` in seconds."""
    return statements(conn).seconds_between(start, end)


def greatest(conn: sa.Connection, *values: Any) -> sa.ColumnElement[Any]:
    """The largest of ``values``."""
    return statements(conn).greatest(*values)


def notify_ready(conn: sa.Connection) -> None:
    """Wake controllers waiting for ready work (delivered when the transaction commits)."""
    statements(conn).notify_ready(conn)
