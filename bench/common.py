"""What the Kiln benchmarks share: a fresh migrated PostgreSQL database and percentiles."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.config import Settings

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def fresh_database(name: str, extra_ddl: tuple[str, ...] = ()) -> str:
    """Drop and recreate database ``name`` on the local PostgreSQL, migrate it (plus any
    ``extra_ddl``) and return its URL."""
    admin = sa.create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = sa.make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    kiln = Kiln(Settings(database_url=url), pool_size=1)
    kiln.upgrade()
    for ddl in extra_ddl:
        kiln.txn(lambda c, ddl=ddl: c.execute(sa.text(ddl)))
    kiln.close()
    return url


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]
