"""Kiln behind a real PgBouncer in transaction pooling mode (docs/scale.md), as deployments
with many worker hosts run it: Debian's ``pgbouncer``, started here on a free port in front of
the test's own database. Workers and controllers reach PostgreSQL through it; a controller's
LISTEN goes direct (``KILN_LISTEN_DATABASE_URL``). PgBouncer 1.18 (Debian 12) cannot route
server-side prepared statements, and hands a server connection to another client after each
transaction: a session setting or prepared statement that leaked would show up here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import tests.handlers  # noqa: F401 - registers the test handlers
from kiln.app.runtime import Kiln
from kiln.core import audit
from kiln.core.builder import Workflow
from kiln.core.config import Settings
from kiln.store import maintenance
from tests.acceptance.test_crash_recovery import finished, successful_attempts_per_task
from tests.conftest import IN_CI, fast_settings, wait_for
from tests.integration.test_maintenance import _burst, _last_vacuum

pytestmark = pytest.mark.postgres

SERVER_POOL = 5  # PgBouncer's default_pool_size: server connections per database and user


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found is None:
        message = "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)"
        if IN_CI:
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgBouncer:
    """A PgBouncer process in front of the PostgreSQL ``direct_url`` points at."""

    def __init__(self, direct_url: str) -> None:
        self.direct = sa.make_url(direct_url)
        self.port = _free_port()
        # Readable by the postgres user PgBouncer drops to when started as root.
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-pgbouncer-"))
        self.dir.chmod(0o755)
        (self.dir / "users.txt").write_text(f'"{self.direct.username}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self.direct.host} port={self.direct.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            f"admin_users = {self.direct.username}\n"
            f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\n"
            "reserve_pool_size = 0\nmax_client_conn = 1000\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        for f in self.dir.iterdir():
            f.chmod(0o644)
        self.log = open(self.dir / "pgbouncer.log", "wb")  # noqa: SIM115
        as_user = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
        self.proc = subprocess.Popen(
            [_pgbouncer_binary(), *as_user, str(self.dir / "pgbouncer.ini")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._accepts, timeout=30, what="PgBouncer to accept connections")

    def url(self, database: str | None = None) -> str:
        return self.direct.set(
            host="127.0.0.1", port=self.port, database=database
        ).render_as_string(hide_password=False)

    def _accepts(self) -> bool:
        assert self.proc.poll() is None, self.logs()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def show(self, what: str) -> list[dict]:
        """``SHOW <what>`` on PgBouncer's admin console (simple query protocol only)."""
        url = sa.make_url(self.url("pgbouncer")).set(drivername="postgresql")
        with psycopg.connect(
            url.render_as_string(hide_password=False),
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
        ) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def logs(self) -> str:
        return (self.dir / "pgbouncer.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer(pg_url: str) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_url)
    yield bouncer
    bouncer.stop()


def pooled_url(pgbouncer: PgBouncer, pg_url: str) -> str:
    """``pg_url``'s database, through PgBouncer."""
    return pgbouncer.url(sa.make_url(pg_url).database)


def pooled_kiln(pgbouncer: PgBouncer, pg_url: str, **kwargs: Any) -> Kiln:
    """A Kiln whose connections go through PgBouncer, its LISTEN straight to PostgreSQL."""
    settings = fast_settings(database_url=pooled_url(pgbouncer, pg_url), listen_database_url=pg_url)
    return Kiln(settings, **kwargs)


def events_of(kiln: Kiln, task_id: int) -> list[tuple[str, str | None, str | None]]:
    query = sa.text(
        "SELECT to_status, actor, reason FROM events "
        "WHERE entity = 'task' AND entity_id = :id ORDER BY id"
    )
    return kiln.read(lambda c: [tuple(r) for r in c.execute(query, {"id": task_id})])


def test_a_listen_url_of_its_own_means_transaction_pooling_without_prepared_statements(
    monkeypatch,
):
    monkeypatch.setenv("KILN_DATABASE_URL", "postgresql://kiln@pgbouncer:6432/kiln")
    monkeypatch.setenv("KILN_LISTEN_DATABASE_URL", "postgresql://kiln@db:5432/kiln")
    pooled = Settings.from_env()
    assert pooled.transaction_pooling and pooled.prepare_threshold is None
    assert pooled.listen_url == "postgresql://kiln@db:5432/kiln"
    monkeypatch.setenv("KILN_DB_PREPARE_THRESHOLD", "5")  # PgBouncer >= 1.21 can route them
    assert Settings.from_env().prepare_threshold == 5
    monkeypatch.delenv("KILN_LISTEN_DATABASE_URL")
    monkeypatch.delenv("KILN_DB_PREPARE_THRESHOLD")
    direct = Settings.from_env()
    assert not direct.transaction_pooling and direct.prepare_threshold == 5
    assert direct.listen_url == direct.database_url
    monkeypatch.setenv("KILN_DB_POOL_MODE", "transaction")  # a pooler for LISTEN too: no
    assert Settings.from_env().transaction_pooling
    monkeypatch.setenv("KILN_DB_POOL_MODE", "statement")
    with pytest.raises(ValueError, match="KILN_DB_POOL_MODE"):
        Settings.from_env()


def test_concurrent_actors_sharing_server_connections_each_name_their_own_events(pgbouncer, pg_url):
    # Eight threads, each its own actor, through PgBouncer's five server connections: a
    # session-level actor would be read by whichever thread's transaction came next.
    sent: list = []  # a sender: a submit to an idle queue leases its task (events) at once
    kiln = pooled_kiln(
        pgbouncer,
        pg_url,
        pool_size=8,
        sender=sent.extend,
    )
    assert kiln.store.transaction_pooling
    submitted: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def submit_as(actor: str) -> None:
        try:
            with audit.acting(actor=actor):
                submitted[actor] = [
                    kiln.submit({"name": actor, "tasks": [{"name": "A", "handler": "noop"}]})
                    for _ in range(15)
                ]
                for run in submitted[actor][:5]:
                    kiln.cancel(run)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit_as, args=(f"actor-{i}",)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        rows = kiln.read(
            lambda c: c.execute(
                sa.text("SELECT workflow_id, actor, reason, to_status FROM events")
            ).all()
        )
    finally:
        kiln.close()
    owner = {run: actor for actor, runs in submitted.items() for run in runs}
    assert len(owner) == 8 * 15
    assert {owner[r.workflow_id] for r in rows} == set(submitted)
    assert [r for r in rows if r.actor != owner[r.workflow_id]] == []
    cancelled = {r.workflow_id for r in rows if r.reason == "cancel requested"}
    assert cancelled == {run for runs in submitted.values() for run in runs[:5]}


def test_hot_transactions_through_pgbouncer_name_their_actor_without_a_statement_of_its_own(
    pgbouncer, pg_url
):
    # Through a transaction pooler no setting outlives a transaction, so each one names its
    # actor: a one-statement transaction (submit, claim) in its statement, run in autocommit;
    # a longer one (the controller's dispatch pass, a finish) in the statement that begins it.
    sent: list = []
    kiln = pooled_kiln(pgbouncer, pg_url, sender=sent.extend)
    statements: list[tuple[str, bool]] = []

    @sa.event.listens_for(kiln.engine, "before_cursor_execute")
    def _record(conn, _cursor, statement, _params, _context, _many):
        autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        statements.append((" ".join(statement.split()), autocommit))

    def sent_by(op):
        statements.clear()
        op()
        return list(statements)

    actor = "o'brien at 100%"  # quoted in the statement that begins a transaction
    noop = {"name": "hot", "tasks": [{"name": "A", "handler": "noop"}]}
    try:
        with audit.acting(actor=actor):
            submitted = sent_by(lambda: kiln.submit(noop))
            ((task_id, attempt),) = [(d.task_id, d.attempt) for d in sent]
            claimed = sent_by(lambda: kiln.claim([(task_id, attempt)], "worker-1"))
            kiln.submit_many([noop])
            dispatched = sent_by(lambda: kiln.dispatch(10))
        cancelled_id = kiln.submit_many([noop])[0]
        with audit.acting(actor=actor, reason="because"):
            cancelled = sent_by(lambda: kiln.cancel(cancelled_id))
        rows = kiln.read(lambda c: c.execute(sa.text("SELECT actor, reason FROM events")).all())
    finally:
        kiln.close()
    assert [autocommit for _, autocommit in submitted + claimed] == [True, True]
    assert submitted[0][0].startswith("WITH lease AS") and claimed[0][0].startswith("WITH local")
    begin, *rest = dispatched
    assert begin[0].startswith("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config('kiln.")
    assert rest[-1][0] == "COMMIT" and not any("set_config" in s for s, _ in rest)
    # Actor and reason in one: "because" is the transaction's, the cancel then says its own.
    assert cancelled[0][0].startswith("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config(")
    assert "set_config('kiln.actor', 'o''brien" in cancelled[0][0]
    assert "set_config('kiln.reason', 'because', true)" in cancelled[0][0]
    assert [s for s, _ in cancelled].count("COMMIT") == 1
    assert {a for a, _ in rows} == {actor}
    assert len(rows) >= 6  # queued, running (task and run), queued again, cancelled


def test_a_claim_through_pgbouncer_that_puts_a_paused_runs_task_back_names_its_worker(
    pgbouncer, pg_url
):
    # The claim's other branch: a task leased just before its run was paused goes back to
    # ready, an event of the claim's statement like the start it replaces.
    sent: list = []
    kiln = pooled_kiln(pgbouncer, pg_url, sender=sent.extend)
    try:
        run = kiln.submit({"name": "paused", "tasks": [{"name": "A", "handler": "noop"}]})
        ((task_id, attempt),) = [(d.task_id, d.attempt) for d in sent]
        kiln.txn(
            lambda c: c.execute(
                sa.text("UPDATE workflows SET status = 'paused' WHERE id = :id"), {"id": run}
            )
        )
        with audit.acting(actor="worker-7"):
            assert kiln.claim([(task_id, attempt)], "worker-7") == []
        assert events_of(kiln, task_id)[-1] == ("ready", "worker-7", None)
    finally:
        kiln.close()


def test_a_controller_vacuums_the_bloated_queue_tables_through_pgbouncer(pgbouncer, pg_url):
    # VACUUM runs outside any transaction, and no session lock guards it any more: both
    # must hold when each statement may land on another server connection.
    kiln = pooled_kiln(pgbouncer, pg_url)
    try:
        _burst(kiln, maintenance.MIN_DEAD_ROWS + 2_000)
        wait_for(
            lambda: kiln.read(maintenance.dead_rows)[0] >= maintenance.MIN_DEAD_ROWS,
            timeout=30,
            what="the statistics to count the dead rows",
        )
        assert maintenance.vacuum_if_bloated(kiln.engine) is True
        assert _last_vacuum(kiln) is not None
    finally:
        kiln.close()


def test_the_crash_test_runs_through_pgbouncer_with_three_workers(
    cluster, pgbouncer, pg_url, pg_kiln
):
    cluster.env["KILN_DATABASE_URL"] = pooled_url(pgbouncer, pg_url)
    cluster.env["KILN_LISTEN_DATABASE_URL"] = pg_url  # LISTEN needs its own session
    cluster.env["KILN_DB_POOL_SIZE"] = "4"
    # A lease twice the suite's: the rescuer's renewals must not be late on a loaded machine,
    # or its attempt would be lost too and the event history below would have more steps.
    cluster.env["KILN_LEASE_S"] = "6"
    cluster.controller()
    for _ in range(3):
        cluster.worker(threads=2)

    # The crash: the worker running the long task is SIGKILLed; it runs again elsewhere.
    wf = Workflow("survive-a-crash")
    first = wf.add("sleep", name="Long", params={"seconds": 2.0, "value": "done"}, max_attempts=3)
    wf.add("echo", name="After", params={"got": first.result}, depends_on=[first])
    crash_id = pg_kiln.submit(wf, check_handlers=False)
    # Meanwhile enough work that statements repeat past psycopg's prepare threshold on every
    # process, each task to run exactly once.
    bulk = Workflow("bulk")
    roots = [bulk.add("noop", name=f"root-{i}") for i in range(10)]
    for i in range(190):
        bulk.add("noop", name=f"leaf-{i}", depends_on=[roots[i % 10]])
    bulk_id = pg_kiln.submit(bulk, check_handlers=False)

    running = wait_for(
        lambda: (t := pg_kiln.workflow(crash_id)["tasks"][0])["status"] == "running" and t,
        timeout=60,
        what="the long task to start",
    )
    victim = running["lease_owner"]
    os.kill(int(victim.split(":")[2]), signal.SIGKILL)

    run = finished(pg_kiln, crash_id, timeout=90, cluster=cluster)
    assert run["status"] == "succeeded", cluster.logs() + pgbouncer.logs()
    long_task = run["tasks"][0]
    assert [a["outcome"] for a in long_task["attempt_history"]] == ["lost", "succeeded"]
    rescuer = long_task["attempt_history"][1]["worker"]
    assert rescuer != victim
    assert run["tasks"][1]["result"] == {"got": "done"}
    assert finished(pg_kiln, bulk_id, timeout=90, cluster=cluster)["status"] == "succeeded"
    per_task = successful_attempts_per_task(pg_kiln)
    assert len(per_task) == 202 and set(per_task.values()) == {1}

    # The events still name who made each change: the workers that claimed it, recovery
    # (and why) for the lost attempt.
    *_, claimed, lost, requeued, reclaimed, done = events_of(pg_kiln, long_task["id"])
    assert (claimed, lost) == (("running", victim, None), ("retrying", "recovery", "lease expired"))
    assert requeued[0] == "queued" and requeued[1].startswith("controller:")
    assert reclaimed == ("running", rescuer, None)
    assert done == ("succeeded", rescuer, None)
    claims = pg_kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT e.actor = a.worker AS named, count(*) FROM events e JOIN task_attempts a "
                "ON a.task_id = e.entity_id AND a.attempt = e.attempt "
                "WHERE e.entity = 'task' AND e.to_status = 'running' GROUP BY 1"
            )
        ).all()
    )
    attempts = pg_kiln.read(
        lambda c: c.execute(sa.text("SELECT count(*) FROM task_attempts")).scalar()
    )
    assert dict(claims) == {True: attempts}  # every claim, those lost included, names its worker

    # And it all went through PgBouncer, on at most its five server connections.
    database = sa.make_url(pg_url).database
    (pool,) = [p for p in pgbouncer.show("POOLS") if p["database"] == database]
    assert pool["sv_active"] + pool["sv_idle"] + pool["sv_used"] <= SERVER_POOL
    (stats,) = [s for s in pgbouncer.show("STATS") if s["database"] == database]
    assert stats["total_xact_count"] >= 100
