"""Pooled PostgreSQL connections are pinged before use only after sitting idle
(``kiln.store.postgres._ping_after_idle``): what that costs when the server drops a connection, on a
real server whose backend is terminated under the pool."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from kiln.core.errors import DatabaseUnavailable
from kiln.store.db import translate_errors
from kiln.store.dialects import open_store

BACKEND = sa.text("SELECT pg_backend_pid()")


def _terminate(pg_admin: sa.Engine, pid: int) -> None:
    with pg_admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    time.sleep(0.2)  # let the backend exit


def test_a_connection_dropped_while_idle_is_replaced_by_its_ping_before_use(pg_admin, pg_url):
    engine = open_store(pg_url, pool_size=1, ping_after_s=0.1).engine
    with engine.connect() as conn:
        dead = conn.execute(BACKEND).scalar()
    _terminate(pg_admin, dead)
    with engine.connect() as conn:  # idle > 0.1 s: pinged, found dead, replaced
        assert conn.execute(BACKEND).scalar() != dead
    engine.dispose()


def test_a_connection_dropped_within_the_trust_window_fails_one_statement_then_the_pool_recovers(
    pg_admin, pg_url
):
    engine = open_store(pg_url, pool_size=2, ping_after_s=60).engine
    with engine.connect() as a, engine.connect() as b:
        pids = {a.execute(BACKEND).scalar(), b.execute(BACKEND).scalar()}
    for pid in pids:
        _terminate(pg_admin, pid)
    # Trusted without a ping: the statement fails cleanly as "database unavailable" ...
    with pytest.raises(DatabaseUnavailable), translate_errors(), engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    # ... and the pool drops every connection older than that failure, so the next use of
    # either works on a new connection.
    for _ in range(2):
        with engine.connect() as conn:
            assert conn.execute(BACKEND).scalar() not in pids
    engine.dispose()


def test_the_controller_loop_outlives_the_server_dropping_its_listen_connection(pg_admin, pg_url):
    # The controller waits on LISTEN over its own psycopg connection; when the server drops
    # every connection (as a restart does) the loop must wait the outage out, not die.
    import threading

    from kiln.app.runtime import Kiln
    from kiln.workers.controller import Controller
    from tests.conftest import fast_settings, wait_for

    kiln = Kiln(fast_settings(database_url=pg_url), pool_size=2)
    sent: list = []
    ctl = Controller(kiln, send=lambda d, _b: sent.extend(d))
    stop = threading.Event()
    loop = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    loop.start()
    try:
        db = sa.make_url(pg_url).database
        listening = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :db AND query LIKE 'LISTEN%'"
        )

        def listener_pids() -> list[int]:
            with pg_admin.connect() as c:
                return list(c.execute(listening, {"db": db}).scalars())

        for pid in wait_for(listener_pids, timeout=10, what="the controller to LISTEN"):
            _terminate(pg_admin, pid)
        wf = {"name": "after-drop", "tasks": [{"name": "t", "handler": "tests.handlers:echo"}]}
        wf_id = kiln.submit(wf, check_handlers=False)
        wait_for(lambda: any(d.workflow_id == wf_id for d in sent), timeout=15, what="dispatch")
        assert loop.is_alive()
        wait_for(listener_pids, timeout=10, what="the controller to LISTEN again")
    finally:
        stop.set()
        loop.join(timeout=10)
        kiln.close()
