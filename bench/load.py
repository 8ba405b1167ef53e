"""HTTP load on the real processes (a benchmark, not a test).

Starts a fresh PostgreSQL database (``kiln_load``) and Redis db 7, the web process under
gunicorn (``--gunicorn-workers`` x ``--gunicorn-threads``, by default the Procfile's), one
``kiln worker`` (8 threads) and one ``kiln controller``; creates one context and one python
pipeline per client; then ``--clients`` threads, each with its own ``requests.Session``, loop
for ``--seconds``:

* ``POST /workflows``: a two-task workflow (B after A, no-op handlers), expecting 201;
* ``GET /workflows/<id>``: read it back, expecting 200;
* on the client's own pipeline, alternately ``POST /dispatcher/stop-pipeline`` and
  ``/dispatcher/resume-pipeline`` (200), then ``GET /dispatcher/operation-status/<ic_id>``
  (200) once per loop until the controller has completed (or failed) the operation.

Any other status, or an exception, is an error. Prints requests/s and latency p50/p95/p99 per
endpoint, the CPU each process used while the clients ran (the load generator shares the
machine's cores with what it measures), the errors, the operations' outcomes, and the backlog when the clients stop (tasks
of the submitted workflows not finished, operations pending); then waits up to
``--drain-seconds`` for that backlog to finish and reports how long it took.

    python bench/load.py [--clients 16] [--seconds 30] [--gunicorn-workers N]
                         [--gunicorn-threads N] [--client requests|raw] [--rate R]
                         [--database kiln_load] [--redis-db 7]

By default a closed loop: each client sends its next request when answered, which keeps the
machine saturated, so latency grows with clients ÷ requests/s. ``--rate R`` (raw clients) is an
open loop instead: the clients send R requests/s in all on a fixed schedule, and each latency
counts from when its request was due, so a backlog shows in it.

The CPU figures come as cores (1.00 = one core busy) and as milliseconds of CPU per request,
the figure to compare across runs on a shared machine (req/s depends on what else runs).
Two runs at once need their own ``--database`` and ``--redis-db``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database, pct  # noqa: E402
from kiln.app.runtime import Kiln  # noqa: E402
from kiln.core.config import Settings  # noqa: E402

DB = "kiln_load"
REDIS_DB = 7
HOST = "127.0.0.1"
NOOP = "kiln.workers.bench_handlers:noop"
WORKFLOW = {
    "name": "load",
    "tasks": [
        {"name": "A", "handler": NOOP},
        {"name": "B", "handler": NOOP, "depends_on": ["A"]},
    ],
}
# Enough shards that no pipeline finishes during a run (a finished pipeline cannot be stopped).
SHARDS = 2000
LOGS = Path("/tmp/kiln-bench-logs")


def procfile_gunicorn() -> tuple[int, int]:
    """``(workers, threads)`` of the Procfile's web process: what the benchmark runs by default."""
    web = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )
    workers = re.search(r"--workers[ =](\d+)", web)
    threads = re.search(r"--threads[ =](\d+)", web)
    return int(workers.group(1)) if workers else 1, int(threads.group(1)) if threads else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) used by process ``pid`` and its live descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        children = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / tick
    return own + sum(cpu_seconds(int(c)) for c in children.split())


def cpu_snapshot(procs: list[subprocess.Popen], kiln: Kiln) -> dict[str, float]:
    """CPU seconds so far of each process (web: gunicorn's master and its workers), of the
    PostgreSQL backends serving this database (those connected now: one that closed in
    between is missed), and of this one (the client threads and the backlog poller)."""
    names = ("web (gunicorn)", "kiln worker", "kiln controller")
    snap = {name: cpu_seconds(p.pid) for name, p in zip(names, procs, strict=True)}
    backends = kiln.read(lambda c: c.execute(BACKENDS).scalars().all())
    snap["postgres"] = sum(cpu_seconds(pid) for pid in backends)
    times = os.times()
    snap["load generator"] = times.user + times.system
    return snap


def wait_until(cond, timeout: float, what: str, procs: list[subprocess.Popen] = ()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := cond():
                return value
        except requests.RequestException:
            pass
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{' '.join(p.args)} exited with {p.returncode} (logs in {LOGS})")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- clients ----------------------------------------------------------------------------


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    workflow_ids: list[int] = field(default_factory=list)


Call = tuple[str, str, str, int, Any]  # (label, method, path, expected status, JSON body)


def session(pipeline_id: int, stats: Stats) -> Generator[Call, Any, None]:
    """What one client does, as the calls it makes: each ``yield`` is a call, answered with
    the response's JSON (None after an error). Both client kinds drive the same sessions."""
    next_op, pending_op = "stop", None
    while True:
        run = yield ("POST /workflows", "POST", "/workflows", 201, WORKFLOW)
        if run is not None:
            stats.workflow_ids.append(run["id"])
            yield ("GET /workflows/<id>", "GET", f"/workflows/{run['id']}", 200, None)
        if pending_op is None:
            created = yield (
                f"POST /dispatcher/{next_op}-pipeline",
                "POST",
                f"/dispatcher/{next_op}-pipeline",
                200,
                {"pipeline_id": pipeline_id},
            )
            if created is not None:
                pending_op = created["ic_id"]
        else:
            row = yield (
                "GET /dispatcher/operation-status/<ic_id>",
                "GET",
                f"/dispatcher/operation-status/{pending_op}",
                200,
                None,
            )
            if row is not None and row["status"] in ("completed", "failed"):
                stats.outcomes[f"{row['operation']} {row['status']}"] += 1
                if row["status"] == "failed":
                    stats.outcomes["failed: " + row["error"][:120]] += 1
                next_op = "resume" if next_op == "stop" else "stop"
                pending_op = None


class Client(threading.Thread):
    """One HTTP client (``--client requests``, the default): a thread with its own
    ``requests.Session``, running :func:`session`."""

    def __init__(self, base: str, pipeline_id: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.pipeline_id = pipeline_id
        self.stop_event = stop
        self.stats = Stats()
        self.session = requests.Session()

    def call(self, label: str, method: str, path: str, expect: int, body: Any) -> Any:
        t0 = time.perf_counter()
        try:
            r = self.session.request(method, self.base + path, timeout=30, json=body)
        except requests.RequestException as exc:
            self.stats.errors.append(f"{label}: {type(exc).__name__}: {exc}")
            return None
        self.stats.latency[label].append((time.perf_counter() - t0) * 1000)
        if r.status_code != expect:
            self.stats.errors.append(f"{label}: HTTP {r.status_code}: {r.text[:200]}")
            return None
        return r.json()

    def run(self) -> None:
        calls = session(self.pipeline_id, self.stats)
        call = next(calls)
        while not self.stop_event.is_set():
            call = calls.send(self.call(*call))


class RawClients(threading.Thread):
    """``--client raw``: every client as a coroutine on one asyncio loop in one thread, each
    on its own keep-alive connection, writing HTTP/1.1 by hand. The same sessions and timing
    as :class:`Client` at a fraction of its CPU: ``requests`` costs about a millisecond of
    CPU per call, which the server being measured, sharing the cores, does not get."""

    def __init__(
        self, base: str, pipeline_ids: list[int], stop: threading.Event, rate: float = 0.0
    ) -> None:
        super().__init__(daemon=True)
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.pipeline_ids = pipeline_ids
        self.stop_event = stop
        # --rate: each client sends on a schedule of its share of the rate, its first
        # request staggered by its place among the clients (0: as fast as answered).
        n = len(pipeline_ids)
        interval = n / rate if rate else 0.0
        self.clients = [
            RawClient(self, pid, interval, i * interval / n) for i, pid in enumerate(pipeline_ids)
        ]

    def run(self) -> None:
        async def main() -> None:
            await asyncio.gather(*(c.run() for c in self.clients))

        asyncio.run(main())


class RawClient:
    def __init__(
        self, owner: RawClients, pipeline_id: int, interval: float = 0.0, offset: float = 0.0
    ) -> None:
        self.owner = owner
        self.pipeline_id = pipeline_id
        self.interval = interval
        self.offset = offset
        self.stats = Stats()
        self.stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await asyncio.open_connection(self.owner.host, self.owner.port)
        reader, writer = self.stream
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.owner.host}:{self.owner.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        status_line = await reader.readline()
        if not status_line:  # the server closed the kept-alive connection: once more
            writer.close()
            self.stream = None
            return await self.exchange(method, path, body)
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        data = await reader.readexactly(length)
        if close:
            writer.close()
            self.stream = None
        return int(status_line.split()[1]), data

    async def call(
        self, label: str, method: str, path: str, expect: int, body: Any, due: float | None = None
    ) -> Any:
        # On a schedule (--rate), latency counts from when the request was due, so a request
        # sent late because the one before it was slow counts its wait (no coordinated
        # omission).
        t0 = time.perf_counter() if due is None else due
        try:
            payload = None if body is None else json.dumps(body).encode()
            status, data = await asyncio.wait_for(self.exchange(method, path, payload), 30)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            self.stats.errors.append(f"{label}: {type(exc).__name__}: {exc}")
            if self.stream is not None:
                self.stream[1].close()
                self.stream = None
            return None
        self.stats.latency[label].append((time.perf_counter() - t0) * 1000)
        if status != expect:
            self.stats.errors.append(f"{label}: HTTP {status}: {data[:200]!r}")
            return None
        return json.loads(data)

    async def run(self) -> None:
        calls = session(self.pipeline_id, self.stats)
        call = next(calls)
        due = time.perf_counter() + self.offset
        while not self.owner.stop_event.is_set():
            if not self.interval:
                call = calls.send(await self.call(*call))
                continue
            if (ahead := due - time.perf_counter()) > 0:
                await asyncio.sleep(ahead)
            call = calls.send(await self.call(*call, due=due))
            due += self.interval
        if self.stream is not None:
            self.stream[1].close()


# --- backlog ----------------------------------------------------------------------------

BACKENDS = sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
BACKLOG = sa.text(
    "SELECT"
    " (SELECT count(*) FROM tasks t JOIN workflows w ON w.id = t.workflow_id"
    "   WHERE w.name = 'load' AND t.status NOT IN"
    "   ('succeeded', 'failed', 'cancelled', 'upstream_failed')) AS tasks_unfinished,"
    " (SELECT count(*) FROM workflows WHERE name = 'load'"
    "   AND status NOT IN ('succeeded', 'failed', 'cancelled')) AS workflows_unfinished,"
    " (SELECT count(*) FROM workflows WHERE name = 'load' AND status = 'failed')"
    "   AS workflows_failed,"
    " (SELECT count(*) FROM operations WHERE status IN ('pending', 'processing'))"
    "   AS operations_pending,"
    " (SELECT count(*) FROM tasks t JOIN pipelines p ON p.workflow_id = t.workflow_id"
    "   WHERE t.status = 'succeeded') AS shards_done"
)


def backlog(kiln: Kiln) -> dict[str, int]:
    return dict(kiln.read(lambda c: c.execute(BACKLOG).one()._mapping))


# --- main -------------------------------------------------------------------------------


def run(
    clients: int,
    seconds: float,
    gunicorn_workers: int,
    gunicorn_threads: int,
    drain_seconds: float,
    client: str = "requests",
    database: str = DB,
    redis_db: int = REDIS_DB,
    rate: float = 0.0,
) -> None:
    url = fresh_database(database)
    broker = f"redis://127.0.0.1:6379/{redis_db}"
    r = redis.Redis.from_url(broker)
    r.flushdb()
    LOGS.mkdir(exist_ok=True)
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = {
        **os.environ,
        "KILN_DATABASE_URL": url,
        "KILN_BROKER_URL": broker,
        "KILN_LOG_LEVEL": "WARNING",
        # The caller's PYTHONPATH stays after ROOT: an A/B run can point ``kiln`` at another tree.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("KILN_API_TOKEN", None)
    cli = [sys.executable, "-m", "kiln.cli.main"]
    procs = [
        start(
            [sys.executable, "-m", "gunicorn", "--workers", str(gunicorn_workers),
             "--threads", str(gunicorn_threads), "--bind", f"{HOST}:{port}", "kiln.web.app:create_app()"],
            env,
            LOGS / "load-web.log",
        ),
        start([*cli, "worker", "--threads", "8"], env, LOGS / "load-worker.log"),
        start([*cli, "controller"], env, LOGS / "load-controller.log"),
    ]  # fmt: skip
    kiln = Kiln(Settings(database_url=url), pool_size=1)
    try:
        wait_until(
            lambda: requests.get(base + "/health", timeout=5).ok, 60, "the web process", procs
        )
        setup = requests.Session()
        context = setup.post(
            base + "/contexts",
            json={"name": "load", "rows": list(range(SHARDS)), "num_shards": SHARDS},
            timeout=60,
        )
        context.raise_for_status()
        pipeline_ids = []
        for i in range(clients):
            p = setup.post(
                base + "/pipelines",
                json={
                    "context_id": context.json()["id"],
                    "pipeline_name": f"load-{i}",
                    "pipeline_type": "python",
                    "model_config": {"handler": NOOP},
                },
                timeout=60,
            )
            p.raise_for_status()
            pipeline_ids.append(p.json()["id"])
        print(
            f"web: gunicorn {gunicorn_workers} workers x {gunicorn_threads} threads on {base}; "
            f"clients: {client}"
            + (f", open loop at {rate:g} requests/s offered; " if rate else "; ")
            + f"1 kiln worker x 8 threads; 1 kiln controller; {clients} pipelines of {SHARDS} "
            "no-op shards",
            flush=True,
        )

        stop = threading.Event()
        if client == "raw":
            threads: list[threading.Thread] = [RawClients(base, pipeline_ids, stop, rate)]
            measured: list[Client | RawClient] = list(threads[0].clients)  # type: ignore[attr-defined]
        else:
            threads = [Client(base, pid, stop) for pid in pipeline_ids]
            measured = list(threads)  # type: ignore[arg-type]
        cpu_before = cpu_snapshot(procs, kiln)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        stop.wait(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.perf_counter() - t0
        cpu_after = cpu_snapshot(procs, kiln)
        cpu = {k: max(0.0, cpu_after[k] - cpu_before[k]) / elapsed for k in cpu_before}
        at_stop = backlog(kiln)

        drained = None
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < drain_seconds:
            now = backlog(kiln)
            if now["tasks_unfinished"] == 0 and now["operations_pending"] == 0:
                drained = time.perf_counter() - t1
                break
            time.sleep(0.2)
        final = backlog(kiln)
        dead = [" ".join(p.args) for p in procs if p.poll() is not None]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        kiln.close()
        r.flushdb()

    failures = report(measured, elapsed, at_stop, final, drained, drain_seconds, dead)
    print(
        "CPU while the clients ran (1.00 = one core; the machine has "
        f"{os.cpu_count()}): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
    )
    rate = sum(len(v) for t in measured for v in t.stats.latency.values()) / elapsed
    if rate:
        print(
            "CPU ms per request: "
            + ", ".join(f"{k} {v * 1000 / rate:.2f}" for k, v in cpu.items())
            + f", total {sum(cpu.values()) * 1000 / rate:.2f}"
        )
    if failures:
        raise SystemExit(1)


def report(
    threads: list[Client | RawClient],
    elapsed: float,
    at_stop: dict[str, int],
    final: dict[str, int],
    drained: float | None,
    drain_seconds: float,
    dead: list[str],
) -> int:
    """Print the figures; return the number of errors (HTTP, exceptions, dead processes)."""
    latency: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    outcomes: dict[str, int] = defaultdict(int)
    submitted = 0
    for t in threads:
        for label, values in t.stats.latency.items():
            latency[label] += values
        errors += t.stats.errors
        for k, v in t.stats.outcomes.items():
            outcomes[k] += v
        submitted += len(t.stats.workflow_ids)
    total = sum(len(v) for v in latency.values())
    print(
        f"\n{len(threads)} clients for {elapsed:.1f}s: {total:,} requests = {total / elapsed:,.0f}/s"
    )
    print(
        f"{'endpoint':<42} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for label in sorted(latency, key=lambda k: -len(latency[k])):
        v = latency[label]
        print(
            f"{label:<42} {len(v):>8,} {len(v) / elapsed:>7.1f} {pct(v, 50):>8.1f} "
            f"{pct(v, 95):>8.1f} {pct(v, 99):>8.1f}"
        )
    print(f"errors: {len(errors)}")
    for e in errors[:10]:
        print(f"  {e}")
    print("operations: " + (", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) or "-"))
    print(
        f"backlog when the clients stopped: {at_stop['tasks_unfinished']:,} tasks of "
        f"{at_stop['workflows_unfinished']:,} submitted workflows unfinished (of {submitted:,} "
        f"submitted), {at_stop['operations_pending']} operations pending; pipeline shards done "
        f"meanwhile: {at_stop['shards_done']:,}"
    )
    if drained is not None:
        print(f"drained in {drained:.1f}s after the clients stopped")
    else:
        print(
            f"not drained within {drain_seconds:g}s: {final['tasks_unfinished']:,} tasks, "
            f"{final['operations_pending']} operations left"
        )
    if final["workflows_failed"]:
        print(f"workflows failed: {final['workflows_failed']}")
    if dead:
        print(f"processes that died during the run: {dead}")
    return len(errors) + len(dead)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    workers, threads = procfile_gunicorn()
    ap.add_argument("--gunicorn-workers", type=int, default=workers, help="default: the Procfile's")
    ap.add_argument("--gunicorn-threads", type=int, default=threads, help="default: the Procfile's")
    ap.add_argument("--drain-seconds", type=float, default=60.0)
    ap.add_argument(
        "--client",
        choices=("requests", "raw"),
        default="requests",
        help="requests: a thread per client with requests.Session (the figures before "
        "2026-12-04); raw: asyncio coroutines writing HTTP/1.1 by hand, a fraction of the CPU",
    )
    ap.add_argument("--database", default=DB, help="PostgreSQL database, dropped and recreated")
    ap.add_argument("--redis-db", type=int, default=REDIS_DB, help="Redis db, flushed")
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="with --client raw: an open loop, the clients sending this many requests/s in "
        "all on a fixed schedule, latency counted from when each was due (default: each "
        "client sends when answered, a closed loop that keeps the machine saturated)",
    )
    opts = ap.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", opts.database):
        ap.error("--database must be a plain lower-case name")
    if not 1 <= opts.clients <= 256 or not 0 < opts.seconds <= 600:
        ap.error("--clients must be 1..256 and --seconds 0..600")
    if opts.rate < 0 or (opts.rate and opts.client != "raw"):
        ap.error("--rate must be positive, with --client raw")
    run(
        opts.clients,
        opts.seconds,
        opts.gunicorn_workers,
        opts.gunicorn_threads,
        opts.drain_seconds,
        opts.client,
        opts.database,
        opts.redis_db,
        opts.rate,
    )


if __name__ == "__main__":
    main()
