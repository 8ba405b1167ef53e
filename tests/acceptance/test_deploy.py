"""A deployment as the README describes it: the Procfile started with plain ``honcho start``
on a fresh (empty) PostgreSQL database and Redis, with the user's module next to it; and the
README's "Deployment" section itself, followed word by word in a fresh virtualenv."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from kiln import Client
from tests.conftest import REDIS_URL, ROOT, _db_url, wait_for
from tests.taskinstance_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
VENV_BIN = Path(sys.executable).parent


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


USER_MODULE = code_blocks(readme_section("Deployment"), "python")[0]


@pytest.fixture
def empty_database(pg_admin: sa.Engine) -> Iterator[str]:
    """A new, empty PostgreSQL database (not migrated: the deployment must do it)."""
    name = f"kiln_deploy_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    yield name
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    """A Redis queue of this test's own, removed afterwards."""
    import redis

    name = f"kiln_deploy_{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in [*client.scan_iter(f"dramatiq:{name}*"), f"kiln:direct:{name}"]:
        client.delete(key)
    client.close()


class Formation:
    """``honcho start`` (or a shell script ending with it) in its own process group."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / "honcho.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


def wait_healthy(port: int, formation: Formation, timeout: float = 60) -> dict:
    def healthy() -> dict | None:
        assert formation.proc.poll() is None, "honcho exited:\n" + formation.output()
        try:
            body = requests.get(f"http://127.0.0.1:{port}/health/detailed", timeout=5).json()
        except requests.RequestException:
            return None
        components = body.get("components", {})
        ok = all(
            components.get(c, {}).get("status") == "healthy" for c in ("workers", "controller")
        )
        return body if ok else None

    return wait_for(healthy, timeout=timeout, what="the formation to be healthy")


def test_plain_honcho_start_runs_the_procfile_on_a_fresh_database(
    tmp_path: Path, empty_database: str, queue: str
):
    shutil.copy(ROOT / "Procfile", tmp_path / "Procfile")
    (tmp_path / "salesflow.py").write_text(USER_MODULE)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(port),
        "KILN_DATABASE_URL": _db_url(empty_database),
        "KILN_BROKER_URL": REDIS_URL,
        "KILN_QUEUE": queue,
        "KILN_IMPORTS": "salesflow",
    }
    env.pop("PYTHONPATH", None)  # salesflow is found from the working directory, as a user's is
    formation = Formation([str(VENV_BIN / "honcho"), "start"], tmp_path, env)
    try:
        wait_healthy(port, formation)
        with Client(f"http://127.0.0.1:{port}") as client:
            run = client.submit({"name": "s", "tasks": [
                {"name": "Total", "handler": "salesflow:total", "params": {"items": [4, 5]}}]})  # fmt: skip
            assert run.result(timeout=60) == {"Total": 9}
        assert formation.proc.poll() is None  # nothing in the formation exited
    finally:
        formation.stop()
    out = formation.output()
    assert "Traceback" not in out, out
    for name in ("web.1", "worker.1", "controller.1"):
        assert f"{name} started" in out
        assert f"{name} stopped" not in out.split("SIGINT received")[0], out


def test_the_readme_deployment_section_word_by_word_gives_a_working_deployment(
    tmp_path: Path, empty_database: str, queue: str
):
    """Its shell blocks run as written; the only substitutions are the checkout's path for
    ``/path/to/kiln`` and this test's own empty database for ``kiln``. ``PORT`` and
    ``KILN_QUEUE`` come from the environment so concurrent tests cannot collide."""
    section = readme_section("Deployment")
    start, follow = code_blocks(section, "sh")
    source = tmp_path / "kiln-src"  # a copy: a build must not write into the checkout
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    app = tmp_path / "app"
    app.mkdir()
    (app / "salesflow.py").write_text(USER_MODULE)

    def as_here(script: str) -> str:
        db_url = "postgresql://postgres@127.0.0.1/kiln "
        assert db_url in script or "KILN_DATABASE_URL" not in script
        return script.replace("/path/to/kiln", str(source)).replace(
            db_url, f"postgresql://postgres@127.0.0.1/{empty_database} "
        )

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KILN_")},
        "PORT": str(port),
        "KILN_QUEUE": queue,
    }
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    formation = Formation(["bash", "-ec", as_here(start)], app, env)
    try:
        wait_healthy(port, formation, timeout=150)  # the fresh virtualenv is installed first
        exports = "\n".join(line for line in start.splitlines() if line.startswith("export "))
        second_shell = f". .venv/bin/activate\n{as_here(exports)}\n{follow}"
        done = subprocess.run(
            ["bash", "-ec", second_shell], cwd=app, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + formation.output()
        assert "succeeded" in done.stdout and "workflow 1 submitted" in done.stderr
        health = done.stdout[done.stdout.index('{"status"') :]
        assert '"status":"healthy"' in health.replace(" ", "")
        assert formation.proc.poll() is None
    finally:
        formation.stop()
    assert (app / ".venv" / "bin" / "kiln").exists()  # it ran in its own fresh virtualenv
    assert "Traceback" not in formation.output()
