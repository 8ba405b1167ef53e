"""Fixtures on the real PostgreSQL and Redis of this machine (never mocks).

The schema is migrated once per test session into a template database; each test that needs
PostgreSQL gets its own ``CREATE DATABASE ... TEMPLATE`` copy. Without PostgreSQL or Redis the
tests that need them are skipped with the reason, except under ``CI``, where they fail.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "KILN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("KILN_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))
_counter = itertools.count()


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


def wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until truthy; return its value or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


# The test suite's handlers by import path (tests.handlers, and functions in test modules)
# are allowed as a deployment would allow its own: by KILN_HANDLER_MODULES.
TEST_HANDLER_MODULES = ("tests",)


def fast_settings(**overrides: Any) -> Settings:
    base = Settings(
        handler_modules=TEST_HANDLER_MODULES,
        lease_s=3.0,
        dispatch_timeout_s=3.0,
        retry_base_s=0.05,
        retry_max_s=0.5,
        controller_poll_s=0.1,
    )
    return dataclasses.replace(base, **overrides)


# --- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    yield engine
    engine.dispose()


def _db_url(name: str) -> str:
    return sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template(pg_admin: sa.Engine) -> Iterator[str]:
    name = f"kiln_tmpl_{os.getpid()}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    kiln = Kiln(Settings(database_url=_db_url(name)), pool_size=1)
    kiln.upgrade()
    kiln.close()
    yield name
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def pg_url(pg_admin: sa.Engine, pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test."""
    name = f"kiln_t_{os.getpid()}_{next(_counter)}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE {pg_template}"))
    yield _db_url(name)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    kiln = Kiln(Settings(database_url=url), pool_size=1)
    kiln.upgrade()
    kiln.close()
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Both of Kiln's databases: production PostgreSQL and the embedded SQLite file."""
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


@pytest.fixture
def kiln(database_url: str) -> Iterator[Kiln]:
    k = Kiln(fast_settings(database_url=database_url), pool_size=8)
    yield k
    k.close()


@pytest.fixture
def embedded(kiln: Kiln) -> Iterator[Any]:
    """Kiln's embedded runtime (in-process broker, worker threads, controller) on ``kiln``."""
    import tests.handlers  # noqa: F401 - registers the test handlers
    from kiln.workers.embedded import EmbeddedRuntime

    with EmbeddedRuntime(kiln, threads=4) as rt:
        yield rt


# --- Redis ------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable("Redis at 127.0.0.1:6379", exc)
    yield REDIS_URL
    client.close()


# --- real processes ---------------------------------------------------------------------


class Cluster:
    """Kiln's Procfile processes (worker, controller, web) as real subprocesses."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, name: str | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name or args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli.main", *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc._kiln_log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def worker(self, threads: int = 4) -> subprocess.Popen:
        return self.start("worker", "--threads", str(threads), name="worker")

    def controller(self) -> subprocess.Popen:
        return self.start("controller", name="controller")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc._kiln_log.close()  # type: ignore[attr-defined]


@pytest.fixture
def cluster(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Environment for real worker/controller processes on this test's own database and its
    own Redis queue; the processes are started by the test."""
    queue = f"kiln_test_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KILN_DATABASE_URL": pg_url,
        "KILN_BROKER_URL": redis_url,
        "KILN_QUEUE": queue,
        "KILN_IMPORTS": "tests.handlers",
        "KILN_HANDLER_MODULES": ",".join(TEST_HANDLER_MODULES),
        "KILN_LEASE_S": "3",
        "KILN_DISPATCH_TIMEOUT_S": "3",
        "KILN_RETRY_BASE_S": "0.05",
        "KILN_RETRY_MAX_S": "0.5",
        "KILN_CONTROLLER_POLL_S": "0.1",
        "KILN_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    c = Cluster(env, logs)
    yield c
    c.stop()
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in [*client.scan_iter(f"dramatiq:{queue}*"), f"kiln:direct:{queue}"]:
        client.delete(key)
    client.close()


@pytest.fixture
def pg_kiln(pg_url: str, redis_url: str) -> Iterator[Kiln]:
    """A Kiln handle on the cluster's database (for submitting and checking from the test)."""
    k = Kiln(fast_settings(database_url=pg_url, broker_url=redis_url), pool_size=4)
    yield k
    k.close()
