"""``kiln worker --processes N`` with real PostgreSQL and Redis: one parent imports what a
worker needs and forks N worker processes, which all run tasks; the parent forwards SIGTERM
and exits with the worst child's code."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.store.schema import processes, task_attempts
from tests.conftest import Cluster, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads parents from /proc")
NAP = {"name": "nap", "tasks": [{"name": "s", "handler": "sleep", "params": {"seconds": 0.2}}]}


def _stat(pid: int) -> list[str]:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _parent_of(pid: int) -> int:
    return int(_stat(pid)[1])


def _exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        return _stat(pid)[0] == "Z"
    except FileNotFoundError:
        return True


def _live_workers(kiln: Kiln) -> dict[str, int]:
    """Registered, not stopped worker processes: their process id -> pid."""
    q = sa.select(processes.c.id, processes.c.pid).where(
        processes.c.kind == "worker", processes.c.stopped_at.is_(None)
    )
    return dict(kiln.read(lambda c: c.execute(q).all()))


def _ran_on(kiln: Kiln) -> set[str]:
    q = sa.select(task_attempts.c.worker).distinct()
    return set(kiln.read(lambda c: c.execute(q).scalars().all()))


def _start(cluster: Cluster) -> subprocess.Popen:
    parent = cluster.start("worker", "--processes", "2", "--threads", "1", name="worker")
    cluster.controller()
    return parent


def _two_workers(cluster: Cluster, kiln: Kiln, parent: subprocess.Popen) -> dict[str, int]:
    def registered() -> dict[str, int] | None:
        assert parent.poll() is None, cluster.logs()
        live = _live_workers(kiln)
        return live if len(live) == 2 else None

    return wait_for(registered, timeout=60, what="two registered worker processes")


def test_a_worker_with_two_processes_runs_tasks_in_two_forked_children_and_stops_on_sigterm(
    cluster, pg_kiln
):
    parent = _start(cluster)
    workers = _two_workers(cluster, pg_kiln, parent)
    pids = set(workers.values())
    assert len(pids) == 2 and parent.pid not in pids
    assert {_parent_of(pid) for pid in pids} == {parent.pid}
    assert "threads run" not in cluster.logs(), "the parent forked with no thread running"

    # Single-task runs, a pair at a time, until each child has run some: with one thread
    # each, a child busy on one leaves the next to the other.
    def both_ran() -> bool:
        for _ in range(2):
            pg_kiln.submit(NAP, check_handlers=False)
        return _ran_on(pg_kiln) == set(workers)

    wait_for(both_ran, timeout=90, interval=0.2, what="tasks run by both worker processes")
    assert _ran_on(pg_kiln) == set(workers)

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0, cluster.logs()
    for pid in pids:  # reaped by the parent before it exited
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _live_workers(pg_kiln) == {}, "both children deregistered on their way out"


def test_the_parent_exits_with_the_worst_code_of_its_worker_processes(cluster, pg_kiln):
    parent = _start(cluster)
    killed, survivor = sorted(_two_workers(cluster, pg_kiln, parent).values())
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: _exited(killed), what="the killed child to exit")
    assert parent.poll() is None, "the parent waits for its other worker process"
    assert _parent_of(survivor) == parent.pid

    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGKILL, cluster.logs()
