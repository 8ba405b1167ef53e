"""The schema revision, read without Alembic: importing Alembic (and Mako, argparse, its DDL
implementations) costs a worker or controller a large part of its start-up, only to compare
two strings. Migrations are named after their revision id (``0015_rerun_index.py`` is
revision ``"0015"``) and chained in that order; ``tests/integration/test_schema_revision.py``
checks both against Alembic's own view."""

from __future__ import annotations

import functools
import re

import sqlalchemy as sa

from kiln.store.base import MIGRATIONS_DIR

_MIGRATION_FILE = re.compile(r"(\d{4})_\w+\.py")
# Alembic's bookkeeping table, as ``alembic upgrade`` writes it (no schema, default name).
_VERSION = sa.table("alembic_version", sa.column("version_num"))


@functools.cache
def head_revision() -> str | None:
    """The newest revision this release's migrations know (what ``kiln db upgrade`` brings a
    database to); None if there are none."""
    ids = (_MIGRATION_FILE.fullmatch(p.name) for p in (MIGRATIONS_DIR / "versions").iterdir())
    return max((m.group(1) for m in ids if m), default=None)


def current_revision(conn: sa.Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    if not sa.inspect(conn).has_table(_VERSION.name):
        return None
    return conn.execute(sa.select(_VERSION.c.version_num)).scalar_one_or_none()
