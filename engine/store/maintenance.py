"""Keeping the queue tables fast: vacuum them after a burst instead of waiting for autovacuum.

Every task changes state (and so writes a new row version) four or five times, and each change
leaves a dead entry in the partial indexes the hot queries read (``tasks_dispatch_idx``,
``tasks_lease_idx``). After a burst of 100,000 tasks those indexes hold 100,000 dead entries
for a handful of live ones, and autovacuum (which wakes once a minute and waits for 20 % of the
table to be dead) leaves them there long enough for every idle-queue check and claim to walk
them: measured here, the idle check went from ~0.2 ms to ~6 ms right after a 20,000-task drain.
So a controller that sees its queue idle and the tables bloated vacuums them itself, with
``SKIP_LOCKED``: a table another controller (or autovacuum) is vacuuming already is skipped,
without the session-level advisory lock this once took, which a transaction pooler such as
PgBouncer would strand on whichever server connection ran it. PostgreSQL only (SQLite has no
such indexes).

The planner needs statistics as much: with none (a table filled since its last ANALYZE,
which autovacuum runs at most once a minute, and never where it is off), it took 20,000 ready
tasks for 57 and chose to read them all and sort them on every dispatch pass (37 ms a pass
with 12,000 ready) instead of the first few hundred of ``tasks_dispatch_idx`` (1 ms). So a
controller also analyzes the queue tables when a tenth of ``tasks`` changed since the last
ANALYZE, busy or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa

log = logging.getLogger("kiln.maintenance")

QUEUE_TABLES = ("tasks", "workflows", "task_attempts")
# Vacuum once this many dead row versions have piled up in ``tasks`` (and they are at least
# this fraction of its live rows, so a huge table is not vacuumed over a trickle).
MIN_DEAD_ROWS = 10_000
MIN_DEAD_FRACTION = 0.05
# Analyze once this many rows of ``tasks`` changed since the last ANALYZE, and they are at
# least this fraction of its live rows (autovacuum's own default fraction).
MIN_CHANGED_ROWS = 1_000
MIN_CHANGED_FRACTION = 0.1


def dead_rows(conn: sa.Connection) -> tuple[int, int]:
    """``(dead, live)`` row versions of ``tasks`` as the statistics system counts them."""
    return _tasks_counts(conn, "n_dead_tup")


def changed_rows(conn: sa.Connection) -> tuple[int, int]:
    """``(changed since the last ANALYZE, live)`` rows of ``tasks``, as the statistics system
    counts them."""
    return _tasks_counts(conn, "n_mod_since_analyze")


def _tasks_counts(conn: sa.Connection, column: str) -> tuple[int, int]:
    row = conn.execute(
        sa.text(
            f"SELECT {column} AS n, n_live_tup AS live FROM pg_stat_user_tables "
            "WHERE relid = 'tasks'::regclass"
        )
    ).one_or_none()
    return (int(row.n), int(row.live)) if row else (0, 0)


def vacuum_if_bloated(engine: sa.Engine) -> bool:
    """VACUUM (ANALYZE) the queue tables when ``tasks`` carries enough dead rows; return
    whether it ran (skipping any table another VACUUM holds)."""
    return _maintain(
        engine, dead_rows, MIN_DEAD_ROWS, MIN_DEAD_FRACTION, "VACUUM (ANALYZE, SKIP_LOCKED)",
        "vacuumed the queue tables (%d dead row versions in tasks, %d live)",
    )  # fmt: skip


def analyze_if_stale(engine: sa.Engine) -> bool:
    """ANALYZE the queue tables when enough of ``tasks`` changed since the last ANALYZE (see
    the module's docstring); return whether it ran."""
    return _maintain(
        engine, changed_rows, MIN_CHANGED_ROWS, MIN_CHANGED_FRACTION, "ANALYZE (SKIP_LOCKED)",
        "analyzed the queue tables (%d rows of tasks changed, %d live)",
    )  # fmt: skip


def _maintain(
    engine: sa.Engine,
    count: Callable[[sa.Connection], tuple[int, int]],
    least: int,
    fraction: float,
    command: str,
    said: str,
) -> bool:
    """Run ``command`` on the queue tables when ``count`` gives at least ``least`` rows of
    ``tasks``, and at least ``fraction`` of its live ones. Safe from any number of controllers
    at once (``SKIP_LOCKED``: a table another one holds is left to it, PostgreSQL 12+), each
    statement on its own (autocommit), so also through a transaction pooler."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        n, live = count(conn)
        if n < least or n < fraction * live:
            return False
        conn.execute(sa.text(f"{command} {', '.join(QUEUE_TABLES)}"))
    log.info(said, n, live)
    return True
