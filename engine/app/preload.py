"""What a process that forks workers (``kiln worker --processes N``) imports once for all of
them beyond the modules themselves: what SQLAlchemy loads only when a ``Kiln`` is built."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.store.db import normalize_url


def import_driver(database_url: str) -> None:
    """Import the DB-API driver of the database at ``database_url`` (psycopg, sqlite3), which
    SQLAlchemy imports when it creates an engine. It creates no engine and connects nothing."""
    sa.make_url(normalize_url(database_url)).get_dialect().import_dbapi()
