"""Pooled PostgreSQL connections are pinged before use only after sitting idle
(``engine.db._ping_after_idle``): what that costs when the server drops a connection, on a
real server whose backend is terminated under the pool."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from engine.db import make_engine, translate_errors
from engine.errors import DatabaseUnavailable

BACKEND = sa.text("SELECT pg_backend_pid()")


def _terminate(pg_admin: sa.Engine, pid: int) -> None:
    with pg_admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    time.sleep(0.2)  # let the backend exit


def test_a_connection_dropped_while_idle_is_replaced_by_its_ping_before_use(pg_admin, pg_url):
    engine = make_engine(pg_url, pool_size=1, ping_after_s=0.1)
    with engine.connect() as conn:
        dead = conn.execute(BACKEND).scalar()
    _terminate(pg_admin, dead)
    with engine.connect() as conn:  # idle > 0.1 s: pinged, found dead, replaced
        assert conn.execute(BACKEND).scalar() != dead
    engine.dispose()


def test_a_connection_dropped_within_the_trust_window_fails_one_statement_then_the_pool_recovers(
    pg_admin, pg_url
):
    engine = make_engine(pg_url, pool_size=2, ping_after_s=60)
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
