"""The controller's own vacuum of the queue tables after a burst (kiln.store.maintenance)."""

from __future__ import annotations

import sqlalchemy as sa

from kiln.store import maintenance
from tests.conftest import wait_for


def _ready_tasks(kiln, n: int) -> None:
    """``n`` ready tasks of one running run, inserted since the last ANALYZE."""

    def write(c):
        wf = c.execute(
            sa.text(
                "INSERT INTO workflows (name, status, on_error, priority, definition, created_at)"
                " VALUES ('burst', 'running', 'stop', 0, '{}', now()) RETURNING id"
            )
        ).scalar()
        c.execute(
            sa.text(
                "INSERT INTO tasks (workflow_id, name, handler, params, status, created_at,"
                " ready_at) SELECT :wf, 't' || g, 'noop', '{}', 'ready', now(), now()"
                " FROM generate_series(1, :n) g"
            ),
            {"wf": wf, "n": n},
        )

    kiln.txn(write)


def _burst(kiln, n: int) -> None:
    """``n`` tasks of one run, each through one state change (one dead row version each)."""
    _ready_tasks(kiln, n)
    kiln.txn(lambda c: c.execute(sa.text("UPDATE tasks SET status = 'cancelled'")))


def _last_vacuum(kiln):
    return kiln.read(
        lambda c: c.execute(
            sa.text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'tasks'")
        ).scalar()
    )


def test_a_queue_left_bloated_by_a_burst_is_vacuumed_and_analysed(pg_kiln):
    _burst(pg_kiln, maintenance.MIN_DEAD_ROWS + 2_000)
    wait_for(
        lambda: pg_kiln.read(maintenance.dead_rows)[0] >= maintenance.MIN_DEAD_ROWS,
        timeout=15,
        what="the statistics to count the dead rows",
    )
    assert _last_vacuum(pg_kiln) is None
    assert maintenance.vacuum_if_bloated(pg_kiln.engine) is True
    assert _last_vacuum(pg_kiln) is not None
    wait_for(
        lambda: pg_kiln.read(maintenance.dead_rows)[0] < maintenance.MIN_DEAD_ROWS,
        timeout=15,
        what="the vacuum to show in the statistics",
    )
    # Nothing left to do: a second call does not vacuum again.
    assert maintenance.vacuum_if_bloated(pg_kiln.engine) is False


def test_a_queue_with_few_dead_rows_is_left_to_autovacuum(pg_kiln):
    _burst(pg_kiln, 500)
    assert maintenance.vacuum_if_bloated(pg_kiln.engine) is False
    assert _last_vacuum(pg_kiln) is None


def test_vacuuming_is_skipped_on_sqlite(sqlite_url):
    from kiln.store.dialects import open_store

    engine = open_store(sqlite_url).engine
    try:
        assert maintenance.vacuum_if_bloated(engine) is False
    finally:
        engine.dispose()


def _dispatch_plan(kiln) -> str:
    from sqlalchemy.dialects import postgresql

    from kiln.store.dispatch import dispatchable_tasks

    sql = (
        dispatchable_tasks()
        .limit(256)
        .compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )
    return "\n".join(kiln.read(lambda c: c.exec_driver_sql(f"EXPLAIN {sql}").scalars().all()))


def test_a_queue_filled_since_its_last_analyze_is_analyzed_so_a_dispatch_reads_its_index(
    pg_kiln,
):
    # Without statistics the planner took thousands of ready tasks for a few dozen and read
    # and sorted them all on every dispatch pass, instead of the head of tasks_dispatch_idx.
    _ready_tasks(pg_kiln, 5_000)
    wait_for(
        lambda: pg_kiln.read(maintenance.changed_rows)[0] >= maintenance.MIN_CHANGED_ROWS,
        timeout=15,
        what="the statistics to count the inserted rows",
    )
    assert maintenance.analyze_if_stale(pg_kiln.engine) is True
    assert "tasks_dispatch_idx" in _dispatch_plan(pg_kiln)
    wait_for(
        lambda: pg_kiln.read(maintenance.changed_rows)[0] < maintenance.MIN_CHANGED_ROWS,
        timeout=15,
        what="the ANALYZE to show in the statistics",
    )
    assert maintenance.analyze_if_stale(pg_kiln.engine) is False


def test_a_queue_with_few_changes_since_its_last_analyze_is_not_analyzed(pg_kiln):
    _ready_tasks(pg_kiln, 300)
    assert maintenance.analyze_if_stale(pg_kiln.engine) is False


def test_analyzing_is_skipped_on_sqlite(sqlite_url):
    from kiln.store.dialects import open_store

    engine = open_store(sqlite_url).engine
    try:
        assert maintenance.analyze_if_stale(engine) is False
    finally:
        engine.dispose()


def test_a_controller_pass_analyzes_a_queue_filled_since_the_last_analyze(pg_kiln):
    from kiln.workers.controller import Controller

    _ready_tasks(pg_kiln, 5_000)
    wait_for(
        lambda: pg_kiln.read(maintenance.changed_rows)[0] >= maintenance.MIN_CHANGED_ROWS,
        timeout=15,
        what="the statistics to count the inserted rows",
    )
    sent = []
    controller = Controller(pg_kiln, send=lambda d, _batch: sent.extend(d))
    controller.tick()
    assert sent  # the pass dispatched first
    wait_for(
        lambda: (
            pg_kiln.read(
                lambda c: c.execute(
                    sa.text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'tasks'")
                ).scalar()
            )
            is not None
        ),
        timeout=15,
        what="the controller's ANALYZE",
    )
