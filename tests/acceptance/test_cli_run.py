"""``kiln run`` against a deployment (PostgreSQL and Redis) as a user meets it: the run's id
at once, a warning within seconds when no worker or controller is alive, and Ctrl-C that
stops following, not the run, and says how to re-attach."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


class Lines:
    """A subprocess's stderr, read line by line as it is written."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a line containing ``text`` appeared."""
        started = time.monotonic()

        def seen() -> bool:
            while not self._queue.empty():
                self.lines.append(self._queue.get())
            return any(text in line for line in self.lines)

        wait_for(seen, timeout=timeout, what=f"{text!r} in {self.lines}")
        return time.monotonic() - started


def test_kiln_run_without_workers_says_so_and_ctrl_c_leaves_the_run_to_watch(cluster, tmp_path):
    definition = tmp_path / "w.json"
    definition.write_text(json.dumps({"name": "w", "tasks": [
        {"name": "A", "handler": "add", "params": {"a": 2, "b": 3}}]}))  # fmt: skip
    run = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "run", str(definition)],
        cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        err = Lines(run.stderr)
        err.wait_for("workflow 1 submitted", timeout=30)
        assert err.wait_for("no live worker", timeout=5) < 5  # within seconds of submitting
        err.wait_for("no live controller", timeout=5)
        run.send_signal(signal.SIGINT)  # Ctrl-C
        assert run.wait(timeout=20) == 130
        err.wait_for("interrupted", timeout=5)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    said = "".join(err.lines)
    assert "workflow 1 continues" in said and "kiln watch 1" in said, said
    assert "Aborted!" not in said and "Traceback" not in said

    # The run waits in the database; `kiln watch` re-attaches, says why it does not move, and
    # follows it to the end once a worker and a controller start.
    watch = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "watch", "1", "--json"],
        cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        watch_err = Lines(watch.stderr)
        watch_err.wait_for("no live worker", timeout=30)
        cluster.worker(threads=2)
        cluster.controller()
        out = watch.stdout.read()  # until it exits (stderr stays with its reader thread)
        watch.wait(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, cluster.logs()
    assert json.loads(out.splitlines()[-1])["status"] == "succeeded"


def test_kiln_run_with_a_deployment_running_prints_the_id_and_no_warning(cluster, tmp_path):
    cluster.worker(threads=2)
    cluster.controller()
    definition = tmp_path / "w.json"
    definition.write_text(json.dumps({"name": "w", "tasks": [
        {"name": "A", "handler": "add", "params": {"a": 2, "b": 3}}]}))  # fmt: skip

    def alive() -> bool:
        done = subprocess.run(
            [sys.executable, "-m", "kiln.cli.main", "submit", str(definition), "--json"],
            cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.returncode == 0 and "warning" not in done.stderr

    wait_for(alive, timeout=30, what="the worker and controller to heartbeat")
    done = subprocess.run(
        [sys.executable, "-m", "kiln.cli.main", "run", str(definition), "--json"],
        cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + cluster.logs()
    run = json.loads(done.stdout)
    assert done.stderr.startswith(f"workflow {run['id']} submitted")
    assert "warning" not in done.stderr
