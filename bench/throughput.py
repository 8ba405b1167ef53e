"""Throughput and latency of Kiln on local PostgreSQL + Redis (a benchmark, not a test).

W1: pre-submit N no-op tasks, then start the workers (concurrency 8: one ``kiln worker
    --processes 2 --threads 4``, as ``dramatiq -p 2 -t 4``) and one controller, and measure
    how fast they drain (tasks/s, from the first dispatch to the last result recorded, read
    from the database).
    --shape many: N single-task workflows (each a run with its own completion) [default]
    --shape one:  one workflow with N independent tasks
W2: with the same processes idle, submit 300 single-task workflows 20 ms apart (as the web
    process does: ``Kiln.submit`` with a broker sender) and report submit -> start latency
    p50/p95/p99, measured as the peer scripts do: the submitter's ``time.time()`` just before
    ``submit`` to the ``time.time()`` the handler's body reads first (it returns it).

    python bench/throughput.py [--tasks 20000] [--shape many|one] [--w2 300]

Where Kiln connects (the submitter, the workers, the controller): by default a fresh database
``kiln_bench`` on the local PostgreSQL, directly. ``--database-url`` names another way there,
PgBouncer's say: the database it names is dropped and created again on the local PostgreSQL
first, so it must lead there. ``--listen-database-url`` is the controller's LISTEN connection
(``KILN_LISTEN_DATABASE_URL``; one that differs from the database URL means transaction
pooling). ``--pgbouncer`` starts Debian's PgBouncer in transaction mode for the run and goes
through it, LISTEN direct (docs/scale.md).
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ADMIN, fresh_database, pct  # noqa: E402
from bench.pgbouncer import pgbouncer  # noqa: E402
from kiln.app.runtime import SUBMIT_BATCH_MAX, Kiln  # noqa: E402
from kiln.core.config import Settings  # noqa: E402
from kiln.core.definitions import parse_definition  # noqa: E402

DB = "kiln_bench"
REDIS = "redis://127.0.0.1:6379/8"


def start(args: list[str], env: dict[str, str], log: Path, python: str) -> subprocess.Popen:
    return subprocess.Popen(
        [python, "-m", "kiln.cli.main", *args],
        env=env,
        cwd=ROOT,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )


def _on(url: str, database: str) -> str:
    """``url`` with its database changed to ``database``."""
    return sa.make_url(url).set(database=database).render_as_string(hide_password=False)


def compile_kiln() -> None:
    """Byte-compile Kiln's modules, as installing a wheel does. An editable install run with
    PYTHONDONTWRITEBYTECODE=1 (as on the benchmark machine) would otherwise compile every
    Kiln module again in every process it spawns, which a user restarting installed workers
    does not pay (the peers' packages are compiled when installed)."""
    for folder in ("engine", "web", "workers", "migrations"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def wait(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def measure(
    tasks: int = 20_000,
    shape: str = "many",
    w2: int = 300,
    processes: int = 2,
    threads: int = 4,
    one_by_one: int = 0,
    database_url: str | None = None,
    listen_database_url: str | None = None,
    python: str = sys.executable,
) -> dict:
    """Run W1 then W2 and return the figures (also printed). ``database_url`` and
    ``listen_database_url``: as ``--database-url`` and ``--listen-database-url``; ``python``:
    the interpreter the worker and controller run on (``--python``)."""
    opts = argparse.Namespace(
        tasks=tasks, shape=shape, w2=w2, processes=processes, threads=threads, one_by_one=one_by_one
    )
    figures: dict = {}
    url = database_url or _on(ADMIN, DB)
    listen = listen_database_url or url
    fresh_database(sa.make_url(url).database or DB)
    print(f"database {sa.make_url(url)!r}, LISTEN {sa.make_url(listen)!r}")

    def settings(**more: str) -> Settings:
        return Settings(database_url=url, listen_database_url=listen, **more)

    r = redis.Redis.from_url(REDIS)
    r.flushdb()
    env = {
        **os.environ,
        "KILN_DATABASE_URL": url,
        "KILN_LISTEN_DATABASE_URL": listen,
        "KILN_BROKER_URL": REDIS,
        "KILN_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    kiln = Kiln(settings(broker_url=REDIS), pool_size=2)
    noop = {"name": "noop", "handler": "kiln.workers.bench_handlers:noop"}

    t0 = time.perf_counter()
    if opts.shape == "one":
        kiln.submit(
            {"name": "w1", "tasks": [{**noop, "name": f"t{i}"} for i in range(opts.tasks)]},
            check_handlers=False,
        )
    else:
        # As a user would enqueue many runs: Kiln.submit_many, 1,000 definitions a call.
        definition = {"name": "w1", "tasks": [noop]}
        for start_i in range(0, opts.tasks, SUBMIT_BATCH_MAX):
            n = min(SUBMIT_BATCH_MAX, opts.tasks - start_i)
            kiln.submit_many([definition] * n)
    submit_s = time.perf_counter() - t0
    figures["w1_enqueue_per_s"] = opts.tasks / submit_s
    print(
        f"W1 submit: {opts.tasks} tasks ({opts.shape}, submit_many) in {submit_s:.2f}s = "
        f"{opts.tasks / submit_s:,.0f}/s"
    )
    if opts.one_by_one:
        # One-by-one submit rate (Kiln.submit, each its own commit), on a side database so
        # that W1's drain is unchanged.
        side_db = (sa.make_url(url).database or DB) + "_one"
        fresh_database(side_db)
        side = Kiln(
            Settings(database_url=_on(url, side_db), listen_database_url=_on(listen, side_db)),
            pool_size=2,
        )
        side.submit({"name": "warm", "tasks": [noop]})
        t0 = time.perf_counter()
        for _ in range(opts.one_by_one):
            side.submit({"name": "one", "tasks": [noop]})
        one_s = time.perf_counter() - t0
        side.close()
        figures["submit_one_per_s"] = opts.one_by_one / one_s
        print(
            f"one-by-one submit: {opts.one_by_one} in {one_s:.2f}s = {opts.one_by_one / one_s:,.0f}/s"
        )

    logs = Path("/tmp/kiln-bench-logs")
    logs.mkdir(exist_ok=True)
    compile_kiln()
    # Spawn-inclusive, as a user restarting workers sees it: the clock starts when the
    # worker and controller processes are spawned, all at once.
    spawned = time.time()
    spawn0 = time.perf_counter()
    # One `kiln worker` forking its processes, as `dramatiq -p 2 -t 4` does for the peer.
    worker = ["worker", "--processes", str(opts.processes), "--threads", str(opts.threads)]
    procs = [start(worker, env, logs / "worker.log", python)]
    procs.append(start(["controller"], env, logs / "controller.log", python))
    remaining = sa.text("SELECT count(*) FROM tasks WHERE status <> 'succeeded'")
    wait(lambda: kiln.read(lambda c: c.execute(remaining).scalar()) == 0, 900, "the drain")
    wall = time.perf_counter() - spawn0
    first, first_done, last = kiln.read(
        lambda c: c.execute(
            sa.text("SELECT min(queued_at), min(finished_at), max(finished_at) FROM tasks")
        ).one()
    )
    drain = (last - first).total_seconds()
    # Where the start-up goes, in order: each process's registration ("worker 1", "worker 2"
    # when there are several of a kind), the first dispatch, the first claim, the first done.
    boot = kiln.read(
        lambda c: c.execute(
            sa.text(
                "SELECT kind, count(*) OVER (PARTITION BY kind), "
                "row_number() OVER (PARTITION BY kind ORDER BY started_at), started_at "
                "FROM processes UNION ALL "
                "SELECT 'first claim', 1, 1, min(started_at) FROM task_attempts"
            )
        ).all()
    )
    steps = [(kind if n == 1 else f"{kind} {i}", at) for kind, n, i, at in boot]
    steps += [("first dispatch", first), ("first done", first_done)]
    print(
        "start-up after spawn: "
        + ", ".join(
            f"{what} {at.timestamp() - spawned:.2f}s"
            for what, at in sorted(steps, key=lambda s: s[1])
        )
    )
    figures["w1_tasks_per_s"] = opts.tasks / drain
    figures["w1_spawn_tasks_per_s"] = opts.tasks / wall
    figures["first_done_s"] = first_done.timestamp() - spawned
    print(
        f"W1 drain: {opts.tasks} no-op tasks, concurrency {opts.processes}x{opts.threads}: "
        f"{opts.tasks / drain:,.0f} tasks/s (first dispatch -> last result {drain:.2f}s); "
        f"from spawn {wall:.2f}s = {opts.tasks / wall:,.0f}/s; first task done "
        f"{figures['first_done_s']:.2f}s after spawn"
    )

    if opts.w2:
        time.sleep(1.0)  # idle workers
        # Submitted the way the web process does: Kiln.submit with a broker sender, so an
        # idle queue's work goes straight to the workers (the controller is the fallback).
        # Measured as the peers are: the submitter's time.time() just before the call, to
        # the time.time() the handler's body reads first (returned as its result).
        spec = parse_definition(
            {
                "name": "w2",
                "tasks": [{"name": "stamp", "handler": "kiln.workers.bench_handlers:stamp"}],
            }
        )
        os.environ.update(KILN_BROKER_URL=REDIS, KILN_QUEUE=os.environ.get("KILN_QUEUE", "kiln"))
        from kiln.transport import send_now

        submitter = Kiln(settings(broker_url=REDIS), pool_size=2, sender=send_now)
        submitted: dict[int, float] = {}
        submitter.submit(spec, check_handlers=False)  # warm the submitter's connection
        for _ in range(opts.w2):
            t0 = time.time()
            submitted[submitter.submit(spec, check_handlers=False)] = t0
            time.sleep(0.02)
        submitter.close()
        q = sa.text(
            "SELECT w.id, (t.result->>'started')::float8 FROM workflows w "
            "JOIN tasks t ON t.workflow_id = w.id WHERE w.name = 'w2' AND t.status = 'succeeded'"
        )
        started = wait(
            lambda: (
                (v := dict(kiln.read(lambda c: c.execute(q).all())))
                and submitted.keys() <= v.keys()
                and v
            ),
            60,
            "W2",
        )
        ms = [(started[w] - t0) * 1000 for w, t0 in submitted.items()]
        # Leased by the submitter itself (queued in the insert, so at its created_at), not by
        # a controller's pass: the direct path an idle queue should always take.
        direct_q = sa.text(
            "SELECT count(*) FROM tasks WHERE name = 'stamp' AND queued_at = created_at"
        )
        figures["w2_direct"] = kiln.read(lambda c: c.execute(direct_q).scalar()) - 1  # - warm-up
        figures.update(w2_p50_ms=pct(ms, 50), w2_p95_ms=pct(ms, 95), w2_p99_ms=pct(ms, 99))
        print(
            f"W2 submit->start over {opts.w2} single-task workflows 20 ms apart: "
            f"p50 {pct(ms, 50):.2f} ms, p95 {pct(ms, 95):.2f} ms, p99 {pct(ms, 99):.2f} ms, "
            f"mean {statistics.mean(ms):.2f} ms; {figures['w2_direct']} of {opts.w2} sent directly"
        )
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    kiln.close()
    r.flushdb()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--shape", choices=("many", "one"), default="many")
    ap.add_argument("--w2", type=int, default=300)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--one-by-one", type=int, default=1000, help="runs submitted one by one")
    ap.add_argument("--database-url", help="where Kiln connects (default: kiln_bench, direct)")
    ap.add_argument("--listen-database-url", help="the controller's LISTEN (default: the same)")
    ap.add_argument("--pgbouncer", action="store_true", help="through PgBouncer (transaction mode)")
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter of the worker and controller processes: one of a venv with Kiln "
        "installed as a user would (`pip install .`, no test extras), for start-up figures",
    )
    opts = ap.parse_args()
    args = (opts.tasks, opts.shape, opts.w2, opts.processes, opts.threads, opts.one_by_one)
    if not opts.pgbouncer:
        measure(
            *args,
            database_url=opts.database_url,
            listen_database_url=opts.listen_database_url,
            python=opts.python,
        )
        return
    direct = opts.database_url or _on(ADMIN, DB)
    with pgbouncer(direct) as pooled:
        measure(*args, database_url=pooled, listen_database_url=direct, python=opts.python)


if __name__ == "__main__":
    main()
