"""What every module of the store shares whatever the database: the clock, URL spelling, and
the one translation of "cannot reach the database" driver errors. Per-database code lives in
``kiln.store.postgres`` and ``kiln.store.sqlite``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa

from kiln.core.clock import aware as aware  # the store modules import both from here
from kiln.core.clock import utcnow as utcnow
from kiln.core.errors import DatabaseUnavailable, InvalidValue

# The LISTEN/NOTIFY channel controllers wait on (spelled the same in queries.sql).
READY_CHANNEL = "kiln_ready"


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``postgresql://``) and pick psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn "cannot reach the database" driver errors into :class:`DatabaseUnavailable`, and
    a value the database refuses into :class:`InvalidValue`."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        if "locked" in str(exc).lower():
            raise
        raise DatabaseUnavailable(f"database unavailable: {exc.orig}") from exc
    except sa.exc.DataError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        raise InvalidValue(f"the database refused a value: {reason}") from exc
