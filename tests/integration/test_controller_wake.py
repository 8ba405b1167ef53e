"""Controllers sleeping on LISTEN are woken by a NOTIFY the store sends once the work it
announces has committed, in a transaction of its own (``wake`` in kiln/store/queries.sql):
inside the work's transaction, PostgreSQL's one notify-queue lock would be held through the
commit's synchronous flush, so every notifying commit would queue behind the others' fsync."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.errors import IdempotencyKeyReused
from kiln.store.db import READY_CHANNEL
from tests.conftest import fast_settings

ONE_TASK = {"name": "woken", "tasks": [{"name": "a", "handler": "tests.handlers:echo"}]}


@pytest.fixture
def pg_only(pg_url: str) -> Iterator[Kiln]:
    k = Kiln(fast_settings(database_url=pg_url), pool_size=2)
    yield k
    k.close()


class Recorder:
    """The statements and commits an engine sends, in order."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seen: list[str] = []
        self._engine = engine
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "NOTIFY" in statement:
            self.seen.append("notify")
        elif "INSERT INTO workflows" in statement:
            self.seen.append("insert")

    def _commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.seen.append("commit")

    def close(self) -> None:
        sa.event.remove(self._engine, "before_cursor_execute", self._statement)
        sa.event.remove(self._engine, "commit", self._commit)


def _listen(url: str) -> psycopg.Connection:
    plain = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(plain, autocommit=True)
    conn.execute(f"LISTEN {READY_CHANNEL}")
    return conn


def test_a_listening_controller_is_woken_by_a_submit_and_then_sees_its_run(
    pg_only: Kiln, pg_url: str
) -> None:
    listener = _listen(pg_url)
    try:
        run_id = pg_only.submit(ONE_TASK)
        woken = next(listener.notifies(timeout=10, stop_after=1), None)
        assert woken is not None and woken.channel == READY_CHANNEL
        status = pg_only.read(
            lambda c: c.execute(
                sa.text("SELECT status FROM tasks WHERE workflow_id = :w"), {"w": run_id}
            ).scalar_one()
        )
        assert status == "ready"
    finally:
        listener.close()


def test_a_one_statement_submit_notifies_in_a_statement_of_its_own_after_its_insert(
    pg_only: Kiln,
) -> None:
    recorder = Recorder(pg_only.engine)
    try:
        pg_only.submit(ONE_TASK)
    finally:
        recorder.close()
    # On PostgreSQL the submit runs in autocommit: its insert is its own transaction, and the
    # wake-up the next statement, not part of it.
    assert [s for s in recorder.seen if s != "commit"] == ["insert", "notify"]


def test_a_transaction_that_readies_work_commits_before_the_controllers_are_woken(
    pg_only: Kiln,
) -> None:
    recorder = Recorder(pg_only.engine)
    try:
        # With idempotency keys the batch is a transaction (a replay check may refuse it).
        pg_only.submit_many([ONE_TASK, ONE_TASK], idempotency_keys=["k1", "k2"])
    finally:
        recorder.close()
    assert recorder.seen.index("insert") < recorder.seen.index("commit")
    assert recorder.seen.index("commit") < recorder.seen.index("notify")
    assert recorder.seen.count("notify") == 1


def test_a_transaction_that_fails_wakes_nobody(pg_only: Kiln, pg_url: str) -> None:
    listener = _listen(pg_url)
    try:
        pg_only.submit_many([ONE_TASK], idempotency_keys=["same"])
        next(listener.notifies(timeout=10, stop_after=1))  # that batch's wake-up
        with pytest.raises(IdempotencyKeyReused):
            # The same key on another definition refuses the whole batch after its insert.
            other = {**ONE_TASK, "name": "other"}
            pg_only.submit_many([ONE_TASK, other], idempotency_keys=["fresh", "same"])
        assert next(listener.notifies(timeout=0.5, stop_after=1), None) is None
        runs = pg_only.read(lambda c: c.execute(sa.text("SELECT count(*) FROM workflows")))
        assert runs.scalar_one() == 1
    finally:
        listener.close()
