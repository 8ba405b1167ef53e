"""What every peer script shares: how a job records that it started, and the W1/W2 driver.

Standard library only: each peer script runs under that peer's own throwaway virtualenv and
imports this file from its own directory.

How a job is timed, the same way for every peer: the job body appends one line
``"<job number> <time.time()>"`` to the file named by ``KILN_PEER_RECORDS``, with a single
``os.write`` on an ``O_APPEND`` descriptor (atomic for a line this short, whatever mix of
processes, threads or coroutines runs the jobs). The driver reads that file incrementally.
W1 is ``jobs / (last start - first start)``; W2 latency is ``start - submit``, both taken
with ``time.time()`` on this one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

RECORDS_ENV = "KILN_PEER_RECORDS"
URL_ENV = "KILN_PEER_URL"  # the PostgreSQL DSN or Redis URL this peer uses
W2_GAP_S = 0.02
_fd: int | None = None
_fd_lock = threading.Lock()


def record(job: int) -> None:
    """Called first thing inside every benchmark job: note when job ``job`` started."""
    global _fd
    now = time.time()
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                _fd = os.open(os.environ[RECORDS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, f"{job} {now:.6f}\n".encode())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, the same rule as bench/throughput.py."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Records:
    """Reads the records file as it grows; ``starts[job]`` is the first start seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.starts: dict[int, float] = {}
        self.duplicates = 0
        self._offset = 0
        self._tail = b""

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            job, t = line.split()
            if int(job) in self.starts:
                self.duplicates += 1
            else:
                self.starts[int(job)] = float(t)

    def count(self, jobs: range) -> int:
        return sum(1 for j in jobs if j in self.starts)


def spawn(cmd: Sequence[str], env: dict[str, str], logfile: Path) -> subprocess.Popen:
    """Start a worker process in its own process group, output to ``logfile``."""
    return subprocess.Popen(
        list(cmd),
        env=env,
        stdout=open(logfile, "ab"),  # noqa: SIM115 - owned by the child
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(procs: Iterable[subprocess.Popen], grace: float = 20.0) -> None:
    """SIGTERM each worker's main process (its own warm shutdown), then SIGKILL its whole
    process group, at once if it exited (stragglers) or after ``grace`` if it did not."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def _wait_for(
    records: Records, jobs: range, procs: list[subprocess.Popen], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        records.poll()
        done = records.count(jobs)
        if done == len(jobs):
            return
        dead = [p.args for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: a worker exited early ({dead[0]}); {done}/{len(jobs)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out after {timeout:.0f}s with {done}/{len(jobs)}")
        time.sleep(0.05)


def drive(
    *,
    jobs: int,
    w2: int,
    workdir: Path,
    enqueue_many: Callable[[range], None],
    submit: Callable[[int], None],
    start_workers: Callable[[], list[subprocess.Popen]],
    timeout: float = 600.0,
) -> dict:
    """Run W1 then W2 against one peer and return its figures.

    ``enqueue_many(range)`` enqueues W1 jobs with no worker running (it may batch);
    ``submit(job)`` enqueues one W2 job the way an application would; ``start_workers()``
    starts the peer's workers (concurrency 8 in total) and returns their processes.
    """
    records = Records(workdir / "records.txt")
    os.environ[RECORDS_ENV] = str(records.path)
    records.path.unlink(missing_ok=True)
    w1_jobs = range(jobs)
    w2_jobs = range(jobs, jobs + w2)

    t0 = time.perf_counter()
    enqueue_many(w1_jobs)
    enqueue_s = time.perf_counter() - t0
    log(f"W1: enqueued {jobs} in {enqueue_s:.1f}s; starting workers")

    spawned = time.time()  # spawn-inclusive: as a user restarting workers sees it
    procs = start_workers()
    figures: dict = {"w1_enqueue_per_s": jobs / enqueue_s}
    try:
        _wait_for(records, w1_jobs, procs, timeout, "W1")
        starts = [records.starts[j] for j in w1_jobs]
        span = max(starts) - min(starts)
        figures["w1_jobs_per_s"] = jobs / span if span > 0 else float("nan")
        figures["w1_spawn_jobs_per_s"] = jobs / (max(starts) - spawned)
        figures["first_done_s"] = min(starts) - spawned  # a no-op job: started is done
        log(f"W1: {figures['w1_jobs_per_s']:,.0f} jobs/s over {span:.2f}s")

        if w2:
            time.sleep(1.0)  # idle workers, as bench/throughput.py does
            submitted: dict[int, float] = {}
            for j in w2_jobs:
                submitted[j] = time.time()
                submit(j)
                time.sleep(W2_GAP_S)
            _wait_for(records, w2_jobs, procs, 120.0, "W2")
            ms = [(records.starts[j] - submitted[j]) * 1000 for j in w2_jobs]
            figures.update(w2_p50_ms=pct(ms, 50), w2_p95_ms=pct(ms, 95), w2_p99_ms=pct(ms, 99))
            log(
                f"W2: p50 {figures['w2_p50_ms']:.1f} ms, p95 {figures['w2_p95_ms']:.1f} ms, "
                f"p99 {figures['w2_p99_ms']:.1f} ms"
            )
        # Late duplicates (a job run twice) would show here; at-least-once peers may have some.
        time.sleep(0.2)
        records.poll()
        figures["duplicate_runs"] = records.duplicates
    finally:
        stop(procs)
    return figures


def worker_env(**extra: str) -> dict[str, str]:
    """Environment for a worker: this directory importable, the records file, unbuffered logs."""
    here = str(Path(__file__).resolve().parent)
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": here if not path else f"{here}{os.pathsep}{path}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def venv_bin(name: str) -> str:
    """A console script of the running interpreter's virtualenv (the peer's own)."""
    return str(Path(sys.executable).parent / name)


def parse_args(doc: str | None) -> argparse.Namespace:
    """The command line every peer script takes (the URL comes from ``KILN_PEER_URL``)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--w2", type=int, default=300)
    ap.add_argument("--workdir", type=Path, required=True)
    opts = ap.parse_args()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    return opts


def report(figures: dict, **meta: object) -> None:
    """The one line of JSON on stdout that bench/peers/run.py reads."""
    print(json.dumps({**meta, **figures}), flush=True)
