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
    row = conn.execute(
        sa.text(
            "SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relid = 'tasks'::regclass"
        )
    ).one_or_none()
    return (int(row.n_dead_tup), int(row.n_live_tup)) if row else (0, 0)


def vacuum_if_bloated(engine: sa.Engine) -> bool:
    """VACUUM (ANALYZE) the queue tables when ``tasks`` carries enough dead rows; return
    whether it ran (skipping any table another VACUUM holds). Safe to call from any number of
    controllers at once, each statement on its own (autocommit), so also through a
    transaction pooler."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        dead, live = dead_rows(conn)
        if dead < MIN_DEAD_ROWS or dead < MIN_DEAD_FRACTION * live:
            return False
        # SKIP_LOCKED: a table another VACUUM holds is left to it (PostgreSQL 12+).
        conn.execute(sa.text(f"VACUUM (ANALYZE, SKIP_LOCKED) {', '.join(QUEUE_TABLES)}"))
    log.info("vacuumed the queue tables (%d dead row versions in tasks, %d live)", dead, live)
    return True


def changed_rows(conn: sa.Connection) -> tuple[int, int]:
    """``(changed since the last ANALYZE, live)`` rows of ``tasks``, as the statistics system
    counts them."""
    row = conn.execute(
        sa.text(
            "SELECT n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables "
            "WHERE relid = 'tasks'::regclass"
        )
    ).one_or_none()
    return (int(row.n_mod_since_analyze), int(row.n_live_tup)) if row else (0, 0)


def analyze_if_stale(engine: sa.Engine) -> bool:
    """ANALYZE the queue tables when enough of ``tasks`` changed since the last ANALYZE (see
    the module's docstring); return whether it ran. Safe from any number of controllers at
    once (``SKIP_LOCKED``), and in autocommit, so also through a transaction pooler."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        changed, live = changed_rows(conn)
        if changed < MIN_CHANGED_ROWS or changed < MIN_CHANGED_FRACTION * live:
            return False
        conn.execute(sa.text(f"ANALYZE (SKIP_LOCKED) {', '.join(QUEUE_TABLES)}"))
    log.info("analyzed the queue tables (%d rows of tasks changed, %d live)", changed, live)
    return True
