"""Kiln against the queues a user would pick instead (a benchmark, not a test).

Runs the same two workloads, one system after another, each with worker concurrency 8:
  W1  enqueue N no-op jobs with no worker running (jobs/s; batched where the system can:
      Kiln.submit_many, 1,000 a call), then spawn the workers: drain jobs/s from the spawn to
      the last job, and the first job done after the spawn (a user restarting workers).
  W2  300 single jobs submitted 20 ms apart to idle workers: submit -> start latency
      p50/p95/p99 (each job records its start time; same clock as the submitter).
Peers: procrastinate, pgqueuer and DBOS queues on the local PostgreSQL (a fresh database each,
dropped after); plain Dramatiq and Celery on the local Redis (their own DB number, flushed
before and after). Each peer runs from its own throwaway virtualenv under /tmp/kiln-peers,
never from the project's dependencies; its code is bench/peers/<peer>_bench.py, which prints
one JSON line. Kiln is measured by bench/throughput.py's measure(), its worker and controller
run from a throwaway virtualenv too (``pip install -e`` of this checkout, no test extras: the
test extras' OpenTelemetry SDK is imported by redis-py when present, which a plain install
does not pay). Last, two physical
references: pgbench TPS of a one-row claim (UPDATE ... FOR UPDATE SKIP LOCKED) at 8 clients,
and W2's durable floor (``run_floor``: raw INSERT, Redis wake-up, claim UPDATE).

The Markdown table is printed and written to bench/peers/results.md.

    /work/venv/bin/python bench/peers/run.py
        [--peers procrastinate,pgqueuer,dbos,dramatiq,celery,kiln] [--jobs 20000] [--w2 300]
        [--skip-install] [--no-pgbench] [--note TEXT] [--repeat 3]
Develop with --jobs 2000 --w2 50; the full run takes about 7 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS_HOME = Path("/tmp/kiln-peers")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_PEER = "postgresql://postgres@127.0.0.1:5432/{db}"
REDIS = "redis://127.0.0.1:6379/{db}"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PGBENCH_ROWS, PGBENCH_SECONDS = 300_000, 15
PEER_TIMEOUT_S = 900
DEFAULT_PEERS = "procrastinate,pgqueuer,dbos,dramatiq,celery,kiln"
FULL_RUN = {"jobs": 20_000, "w2": 300}


@dataclass(frozen=True)
class Peer:
    key: str
    name: str
    dist: str  # the distribution whose version is reported
    packages: tuple[str, ...]  # what `pip install` gets, in the peer's own venv
    store: str  # "postgres" or "redis"
    redis_db: int = 0

    @property
    def venv(self) -> Path:
        return PEERS_HOME / self.key / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


PEERS = {
    p.key: p
    for p in (
        Peer("procrastinate", "procrastinate", "procrastinate",
             ("procrastinate", "psycopg[binary]"), "postgres"),
        Peer("pgqueuer", "pgqueuer", "pgqueuer", ("pgqueuer[asyncpg]",), "postgres"),
        Peer("dbos", "DBOS queues", "dbos", ("dbos",), "postgres"),
        Peer("dramatiq", "Dramatiq", "dramatiq", ("dramatiq[redis]",), "redis", redis_db=10),
        Peer("celery", "Celery", "celery", ("celery[redis]",), "redis", redis_db=11),
    )
}  # fmt: skip


@dataclass
class Row:
    name: str
    version: str = "?"
    concurrency: str = ""
    figures: dict = field(default_factory=dict)
    error: str | None = None
    spread: dict = field(default_factory=dict)  # figure -> (min, max) over the repetitions


def combine(runs: list[Row]) -> Row:
    """One row of repetitions: each figure's median, and its min-max in ``spread``."""
    ok = [r for r in runs if not r.error]
    if not ok:
        return runs[-1]
    row = Row(ok[0].name, ok[0].version, ok[0].concurrency)
    for key in ok[0].figures:
        values = [r.figures[key] for r in ok if isinstance(r.figures.get(key), int | float)]
        if values:
            row.figures[key] = statistics.median(values)
            row.spread[key] = (min(values), max(values))
    if len(ok) < len(runs):
        row.version += f" ({len(runs) - len(ok)} of {len(runs)} runs failed)"
    return row


def log(msg: str) -> None:
    print(f"[peers] {msg}", file=sys.stderr, flush=True)


# --- environments -------------------------------------------------------------------------


def ensure_venv(peer: Peer, skip_install: bool) -> str:
    """The peer's venv, created and installed if missing (kept between runs); its version."""
    if not peer.python.exists():
        if skip_install:
            raise RuntimeError(f"no venv at {peer.venv} (run once without --skip-install)")
        log(f"{peer.key}: creating {peer.venv} and installing {' '.join(peer.packages)}")
        shutil.rmtree(peer.venv, ignore_errors=True)
        subprocess.run(["python3", "-m", "venv", str(peer.venv)], check=True)
        pip = [str(peer.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run([*pip, *peer.packages], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(peer.venv, ignore_errors=True)
            raise RuntimeError(f"pip install failed: {done.stderr.strip()[-500:]}")
    got = subprocess.run(
        [
            str(peer.python),
            "-c",
            f"import importlib.metadata as m; print(m.version({peer.dist!r}))",
        ],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0:
        raise RuntimeError(f"{peer.dist} is not importable in {peer.venv}: {got.stderr[-300:]}")
    return got.stdout.strip()


def pg_admin(*statements: str) -> None:
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        for s in statements:
            c.execute(sa.text(s))
    engine.dispose()


def fresh_pg(db: str) -> str:
    pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", f"CREATE DATABASE {db}")
    return PG_PEER.format(db=db)


def drop_pg(db: str) -> None:
    pg_admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def flush_redis(db: int) -> str:
    assert db != 0, "never touch Redis DB 0"
    url = REDIS.format(db=db)
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()
    return url


# --- one system at a time -----------------------------------------------------------------


def run_peer(peer: Peer, jobs: int, w2: int, skip_install: bool) -> Row:
    row = Row(peer.name)
    try:
        row.version = ensure_venv(peer, skip_install)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        row.error = f"not installed: {exc}"
        return row
    workdir = PEERS_HOME / peer.key / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    db = f"kiln_peer_{peer.key}"
    url = fresh_pg(db) if peer.store == "postgres" else flush_redis(peer.redis_db)
    cmd = [str(peer.python), str(HERE / f"{peer.key}_bench.py")]
    cmd += ["--jobs", str(jobs), "--w2", str(w2), "--workdir", str(workdir)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["KILN_PEER_URL"] = url
    try:
        out, tail = _run_streaming(cmd, env, prefix=peer.key)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError("no result: " + " | ".join(tail)[-600:])
        result = json.loads(lines[-1])
        row.version = result.pop("version", row.version)
        row.concurrency = result.pop("concurrency", "")
        result.pop("peer", None)
        row.figures = result
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        row.error = f"failed: {exc}"
    finally:
        if peer.store == "postgres":
            drop_pg(db)
        else:
            flush_redis(peer.redis_db)
    return row


def _run_streaming(cmd: list[str], env: dict[str, str], prefix: str) -> tuple[str, list[str]]:
    """Run a peer script: its stderr is echoed live (and its tail kept), its stdout returned."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: deque[str] = deque(maxlen=15)
    out: list[str] = []

    def echo() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            print(f"  [{prefix}] {line.rstrip()}", file=sys.stderr, flush=True)

    def collect() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    readers = [threading.Thread(target=f, daemon=True) for f in (echo, collect)]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"timed out after {PEER_TIMEOUT_S}s") from None
    finally:
        for t in readers:
            t.join(timeout=5)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(tail)[-600:])
    return "".join(out), list(tail)


def kiln_python() -> str:
    """The interpreter of a venv with this checkout installed as a user installs Kiln (no test
    extras), created if missing or if it holds another checkout (even with --skip-install:
    the code measured must be this checkout's)."""
    venv = PEERS_HOME / "kiln" / "venv"
    python = venv / "bin" / "python"
    where = [str(python), "-c", "import kiln, pathlib; print(pathlib.Path(kiln.__file__).parent)"]
    got = subprocess.run(where, capture_output=True, text=True) if python.exists() else None
    if got is None or got.returncode != 0 or Path(got.stdout.strip()) != ROOT / "engine":
        log(f"kiln: creating {venv} with `pip install -e {ROOT}`")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "-e", str(ROOT)],
            check=True,
        )  # fmt: skip
    return str(python)


def run_kiln(jobs: int, w2: int) -> Row:
    row = Row(
        "**Kiln**",
        concurrency="2 procs x 4 threads (`kiln worker --processes 2 --threads 4`) "
        "+ controller (bench/throughput.py)",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    from importlib.metadata import version

    row.version = f"{version('kiln')} @ {commit}"
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import throughput

        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table
            f = throughput.measure(
                tasks=jobs,
                shape="many",
                w2=w2,
                processes=2,
                threads=4,
                python=kiln_python(),
            )
        row.figures = {
            **f,
            "w1_jobs_per_s": f["w1_tasks_per_s"],
            "w1_spawn_jobs_per_s": f["w1_spawn_tasks_per_s"],
        }
    except BaseException as exc:  # noqa: BLE001 - measure() exits on a timeout
        if isinstance(exc, KeyboardInterrupt):
            raise
        row.error = f"failed: {exc!r}"
    return row


def run_pgbench() -> Row:
    """TPS of the bare claim a PostgreSQL queue must do per job, at 8 clients."""
    row = Row("PostgreSQL claim (pgbench)", concurrency="8 clients, 2 threads")
    db = "kiln_peer_pgbench"
    url = fresh_pg(db)
    try:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as c:
            pg_version = c.execute(sa.text("SHOW server_version")).scalar()
            row.version = "PostgreSQL " + pg_version.split()[0]
            c.execute(
                sa.text(
                    "CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " status text NOT NULL DEFAULT 'queued', payload jsonb)"
                )
            )
            c.execute(
                sa.text(
                    "INSERT INTO jobs (payload) SELECT jsonb_build_object('n', n)"
                    f" FROM generate_series(1, {PGBENCH_ROWS}) n"
                )
            )
            c.execute(sa.text("CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued'"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("VACUUM ANALYZE jobs"))
        script = PEERS_HOME / "claim.sql"
        PEERS_HOME.mkdir(parents=True, exist_ok=True)
        script.write_text(
            "UPDATE jobs SET status = 'running' WHERE id = (SELECT id FROM jobs"
            " WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED);\n"
        )
        cmd = [PGBENCH, "-h", "127.0.0.1", "-U", "postgres", "-n", "-c", "8", "-j", "2"]
        cmd += ["-T", str(PGBENCH_SECONDS), "-f", str(script), db]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        tps = float(re.search(r"tps = ([\d.]+) \(without initial", out).group(1))  # type: ignore[union-attr]
        lat = re.search(r"latency average = ([\d.]+) ms", out)
        with engine.connect() as c:
            claimed = c.execute(
                sa.text("SELECT count(*) FROM jobs WHERE status='running'")
            ).scalar()
        engine.dispose()
        if claimed >= PGBENCH_ROWS:
            raise RuntimeError(f"ran out of queued rows ({PGBENCH_ROWS}); raise PGBENCH_ROWS")
        row.figures = {"claims_per_s": tps, "latency_ms": float(lat.group(1)) if lat else None}
        log(f"pgbench: {tps:,.0f} claims/s, {claimed} rows claimed")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.error = f"failed: {exc}"
    finally:
        drop_pg(db)
    return row


def run_floor(w2: int) -> Row:
    """W2's physical floor for any queue that commits a job before starting it: raw psycopg,
    no framework. The submitter INSERTs the job (autocommit), pushes its id onto a Redis list;
    a worker thread blocked in BLPOP claims it with an UPDATE (autocommit) and records the
    start. Measured like W2: ``time.time()`` before the INSERT to ``time.time()`` after the
    claim, ``w2`` jobs 20 ms apart."""
    import psycopg

    row = Row("durable floor (raw INSERT → Redis wake-up → claim UPDATE)", concurrency="1")
    db = "kiln_peer_floor"
    url = fresh_pg(db)
    r = redis.Redis.from_url(REDIS.format(db=14))
    try:
        row.version = f"psycopg {psycopg.__version__}"
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(
                "CREATE TABLE jobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " status text NOT NULL)"
            )
        r.delete("floor")
        started: dict[int, float] = {}

        def worker() -> None:
            with psycopg.connect(url, autocommit=True) as c:
                client = redis.Redis.from_url(REDIS.format(db=14))
                while True:
                    _, raw = client.blpop(["floor"])
                    if raw == b"stop":
                        return
                    c.execute(
                        "UPDATE jobs SET status = 'running' WHERE id = %s AND status = 'queued'",
                        (int(raw),),
                    )
                    started[int(raw)] = time.time()

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        submitted: dict[int, float] = {}
        with psycopg.connect(url, autocommit=True) as sub:
            for _ in range(w2):
                t0 = time.time()
                cur = sub.execute("INSERT INTO jobs (status) VALUES ('queued') RETURNING id")
                job = cur.fetchone()[0]  # type: ignore[index]
                r.rpush("floor", job)
                submitted[job] = t0
                time.sleep(0.02)
        r.rpush("floor", "stop")
        thread.join(timeout=10)
        ms = sorted((started[j] - t0) * 1000 for j, t0 in submitted.items() if j in started)
        if len(ms) < len(submitted):
            raise RuntimeError(f"only {len(ms)} of {len(submitted)} jobs started")
        row.figures = {
            k: ms[min(len(ms) - 1, int(len(ms) * q / 100))]
            for k, q in zip(LATENCIES, (50, 95, 99), strict=True)
        }
        log("floor: W2 p50 {:.2f} ms".format(row.figures["w2_p50_ms"]))
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.error = f"failed: {exc}"
    finally:
        r.delete("floor")
        r.close()
        drop_pg(db)
    return row


# --- the table ----------------------------------------------------------------------------


def _num(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def _cell(r: Row, key: str, digits: int = 0) -> str:
    v = r.figures.get(key)
    if v is None or key not in r.spread or r.spread[key][0] == r.spread[key][1]:
        return _num(v, digits)
    lo, hi = r.spread[key]
    return f"{_num(v, digits)} ({_num(lo, digits)}–{_num(hi, digits)})"


def render(rows: list[Row], context: dict) -> str:
    kiln = next((r.figures for r in rows if r.name == "**Kiln**" and not r.error), {})
    lines = [
        f"### Kiln vs peer queues — {context['date']}",
        "",
        f"Machine: {context['machine']}. Load average before/after: {context['load']}.",
        f"Software: {context['software']}.",
        f"Command: `{context['command']}`"
        + ("" if context["full"] else " — **partial run (not the full workload)**"),
        *([f"Note: {context['note']}"] if context["note"] else []),
        "",
        f"W1: {context['jobs']:,} no-op jobs enqueued with no worker running (enqueue jobs/s), "
        "then the workers spawned (concurrency 8): drain jobs/s and the first job done, both "
        f"counted from the spawn. W2: {context['w2']} single jobs submitted 20 ms apart to "
        "idle workers, submit→start latency. "
        + (
            f"Median of {context['repeat']} runs, (min–max) beside it."
            if context["repeat"] > 1
            else "One run."
        ),
        "Ratios: Kiln drain ÷ peer drain, and peer latency ÷ Kiln latency; above 1× Kiln is ahead.",
        "",
        "| system | version | workers | W1 enqueue jobs/s | W1 drain jobs/s | first job done s "
        "| W2 p50 ms | W2 p95 ms | W2 p99 ms "
        "| Kiln drain ratio | Kiln p50 ratio | Kiln p95 ratio | Kiln p99 ratio |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        f = r.figures
        if r.error:
            why = " ".join(r.error.replace("|", "/").split())  # one table cell
            lines.append(f"| {r.name} | {r.version} | — | {why} | | | | | | | | | |")
        elif "claims_per_s" in f:
            lines.append(
                f"| {r.name} | {r.version} | {r.concurrency} | | {_cell(r, 'claims_per_s')} "
                f"claims/s ({_num(f['latency_ms'], 2)} ms avg) | | | | | | | | |"
            )
        else:
            drain = f.get("w1_spawn_jobs_per_s")
            lines.append(
                f"| {r.name} | {r.version} | {r.concurrency} | {_cell(r, 'w1_enqueue_per_s')} "
                f"| {_cell(r, 'w1_spawn_jobs_per_s')} | {_cell(r, 'first_done_s', 2)} "
                f"| {_cell(r, 'w2_p50_ms', 1)} | {_cell(r, 'w2_p95_ms', 1)} "
                f"| {_cell(r, 'w2_p99_ms', 1)} | {_ratio(kiln.get('w1_spawn_jobs_per_s'), drain)} | "
                + " | ".join(_ratio(f.get(k), kiln.get(k)) for k in LATENCIES)
                + " |"
            )
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


LATENCIES = ("w2_p50_ms", "w2_p95_ms", "w2_p99_ms")
NOTES = [
    "How it is measured: every job's first statement appends `job-number time.time()` to a file;"
    " W1 drain = jobs ÷ (last start − the workers' spawn) for the peers, and (the spawn → the"
    " last result recorded) for Kiln, read from its database (so Kiln's span is the longer);"
    " first job done = the first job's start (a no-op) − the spawn, for Kiln its first result;"
    " W2 = job start − the submitter's `time.time()` just before the enqueue call (Kiln alike:"
    " the submitter's `time.time()` before `Kiln.submit` to the `time.time()` the no-op handler's"
    " body reads first, which it returns as its result). Concurrency 8 for all; how each peer reaches"
    " it is in the workers column and the docstring of bench/peers/<peer>_bench.py, with every"
    " deviation from the peer's defaults (DBOS's queue polling interval 1 s → 10 ms; Dramatiq's"
    " idle worker timeout 1 s → 2 ms, its best W2 latency; Kiln's workers poll Dramatiq at 20 ms"
    " and take idle-queue work from a blocking Redis BLPOP)."
    " The pgbench row is one claim transaction per job at 8 clients with nothing else: a"
    " PostgreSQL queue needs at least a claim and a finish per job. The durable-floor row is"
    " W2 for the least any queue must do that commits a job before it starts: one INSERT"
    " (autocommit), one Redis push and BLPOP, one claim UPDATE (autocommit), raw psycopg, no"
    " framework, no events, no attempts.",
]


def machine_context(opts: argparse.Namespace, load_before: str) -> dict:
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    engine = sa.create_engine(PG_ADMIN)
    with engine.connect() as c:
        pg = c.execute(sa.text("SHOW server_version")).scalar()
    engine.dispose()
    r = redis.Redis.from_url(REDIS.format(db=15))
    redis_version = r.info("server")["redis_version"]
    r.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs (nproc {_nproc()}), {mem_kib / 2**20:.1f} GiB RAM,"
        f" {platform.system()} {platform.release()}",
        "software": f"Python {platform.python_version()}, PostgreSQL {pg} (127.0.0.1:5432),"
        f" Redis {redis_version} (127.0.0.1:6379), peers each in their own venv",
        "load": f"{load_before} / {load}",
        "command": shlex.join(["python", "bench/peers/run.py", *sys.argv[1:]]),
        "full": opts.jobs >= FULL_RUN["jobs"]
        and opts.w2 >= FULL_RUN["w2"]
        and set(opts.peers.split(",")) >= set(DEFAULT_PEERS.split(",")),
        "note": opts.note,
        "jobs": opts.jobs,
        "w2": opts.w2,
        "repeat": opts.repeat,
    }


def _nproc() -> str:
    return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--peers", default=DEFAULT_PEERS, help=f"comma-separated (default {DEFAULT_PEERS})"
    )
    ap.add_argument("--jobs", type=int, default=FULL_RUN["jobs"])
    ap.add_argument("--w2", type=int, default=FULL_RUN["w2"])
    ap.add_argument("--skip-install", action="store_true", help="use the venvs as they are")
    ap.add_argument("--no-pgbench", action="store_true", help="skip the pgbench reference")
    ap.add_argument("--note", default="", help="a line to print under the table's header")
    ap.add_argument("--repeat", type=int, default=3, help="runs per system (median, min-max)")
    opts = ap.parse_args()
    wanted = [p.strip() for p in opts.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p != "kiln" and p not in PEERS]
    if unknown:
        ap.error(f"unknown peers {unknown}; choose from {DEFAULT_PEERS}")

    load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    t0 = time.monotonic()
    rows = []
    runs: dict[str, list[Row]] = {key: [] for key in wanted}
    # Repetitions interleaved (every system once, then again), so a slow spell of a shared
    # machine spreads over all of them instead of hitting one.
    for rep in range(1, opts.repeat + 1):
        for key in wanted:
            log(f"=== {key} (run {rep} of {opts.repeat}) ===")
            row = (
                run_kiln(opts.jobs, opts.w2)
                if key == "kiln"
                else run_peer(PEERS[key], opts.jobs, opts.w2, opts.skip_install or rep > 1)
            )
            if row.error:
                log(f"{key}: {row.error}")
            runs[key].append(row)
    rows = [combine(runs[key]) for key in wanted]
    if not opts.no_pgbench:
        log("=== pgbench ===")
        rows.append(run_pgbench())
        log("=== durable floor ===")
        rows.append(run_floor(opts.w2))
    # Kiln first, then the peers in the order asked, then the reference.
    rows.sort(key=lambda r: 0 if r.name == "**Kiln**" else 1)
    table = render(rows, machine_context(opts, load_before))
    (HERE / "results.md").write_text(table)
    log(f"done in {time.monotonic() - t0:.0f}s; written to {HERE / 'results.md'}")
    print(table)


if __name__ == "__main__":
    main()
