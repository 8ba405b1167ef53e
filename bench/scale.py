"""Dispatch, claim and the controller at scale (a benchmark, not a test).

With 10k, 100k and 1M tasks ready in PostgreSQL (one single-task workflow each, the shape the
API produces), measure:

* **dispatch**: ``Kiln.dispatch(batch, order=kiln.scheduler.order)``, the controller's
  dispatch transaction (``kiln.store.dispatch.dispatch_ready_txn``: the best by priority and
  the oldest, ranked by the policy) for a small batch, p50/p99 ms;
* **claim**: ``Kiln.claim`` of one dispatched task, what a worker does first, p50/p99 ms;
* **record**: ``Kiln.record`` of the batch's results (keeps the queue at its size);
* **idle pass**: one ``Controller.tick`` with the real hooks of ``kiln controller`` and a full
  dispatch window, what every controller does every ``KILN_CONTROLLER_POLL_S`` while nothing
  can be sent;
* ``EXPLAIN (ANALYZE, BUFFERS)`` of every statement of the dispatch transaction, of a claim
  and of the idle pass;
* a real ``kiln controller`` subprocess run for ``--controller-seconds`` against the database
  (dispatching into Redis db 6, no workers, so its dispatch window caps what it sends): peak
  RSS (``VmHWM``), CPU seconds, and how many rows of ``tasks`` PostgreSQL read for it by
  sequential scan.

The tasks are bulk-loaded with ``INSERT ... SELECT generate_series`` (constraints, foreign keys
and indexes in place), then ``VACUUM ANALYZE`` as autovacuum would eventually do.

    python bench/scale.py [--sizes 10000,100000,1000000] [--rounds 200] [--batch 8]
                          [--controller-seconds 20] [--plans all|dispatch|none]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database, pct  # noqa: E402
from kiln.app.runtime import Kiln  # noqa: E402
from kiln.core.config import Settings  # noqa: E402
from kiln.store.dispatch import dispatch_ready_txn  # noqa: E402
from kiln.store.tasks import Outcome, claim_txn  # noqa: E402
from kiln.workers.controller import Controller  # noqa: E402
from kiln.workers.hooks import controller_hooks  # noqa: E402
from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks  # noqa: E402

DB = "kiln_scale"
REDIS = "redis://127.0.0.1:6379/6"
WORKER = "bench-scale-worker"
HANDLER = "kiln.workers.bench_handlers:noop"


# --- loading ----------------------------------------------------------------------------


def add_ready_tasks(kiln: Kiln, n: int, chunk: int = 100_000) -> float:
    """Add ``n`` single-task workflows whose task is ready; returns seconds spent (with the
    VACUUM ANALYZE)."""
    t0 = time.perf_counter()
    definition = (
        '{"name": "scale", "on_error": "stop", "priority": 0, '
        f'"tasks": [{{"name": "t", "handler": "{HANDLER}", "params": {{}}}}]}}'
    )
    for done in range(0, n, chunk):
        size = min(chunk, n - done)
        kiln.txn(
            lambda c, size=size: c.execute(
                sa.text(
                    "WITH w AS ("
                    " INSERT INTO workflows (name, status, on_error, priority, definition,"
                    "   created_at)"
                    " SELECT 'scale', 'pending', 'stop', 0, CAST(:definition AS JSONB), now()"
                    " FROM generate_series(1, :size) RETURNING id)"
                    " INSERT INTO tasks (workflow_id, name, handler, params, status, priority,"
                    "   max_attempts, created_at, ready_at)"
                    " SELECT id, 't', :handler, '{}', 'ready', 0, 3, now(),"
                    "   now() + id * interval '1 microsecond'"
                    " FROM w ORDER BY id"
                ),
                {"definition": definition, "size": size, "handler": HANDLER},
            )
        )
    with kiln.engine.connect() as c:
        c = c.execution_options(isolation_level="AUTOCOMMIT")
        c.execute(sa.text("VACUUM ANALYZE tasks"))
        c.execute(sa.text("VACUUM ANALYZE workflows"))
    return time.perf_counter() - t0


def ready_count(kiln: Kiln) -> int:
    q = sa.text("SELECT count(*) FROM tasks WHERE status IN ('ready', 'retrying')")
    return kiln.read(lambda c: c.execute(q).scalar_one())


# --- latency ----------------------------------------------------------------------------


def measure_worker_path(kiln: Kiln, rounds: int, batch: int, warmup: int = 10) -> dict:
    """Dispatch ``batch`` tasks, claim each one, record their results; ``rounds`` times."""
    lat: dict[str, list[float]] = {"dispatch": [], "claim": [], "record": []}
    for i in range(rounds + warmup):
        t0 = time.perf_counter()
        sent = kiln.dispatch(batch, order=kiln.scheduler.order)  # as a controller does
        t_dispatch = time.perf_counter() - t0
        claimed, t_claim = [], []
        for d in sent:
            t0 = time.perf_counter()
            claimed += kiln.claim([(d.task_id, d.attempt)], WORKER)
            t_claim.append(time.perf_counter() - t0)
        now = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        kiln.record([Outcome(t, ok=True, started_at=now, finished_at=now) for t in claimed])
        t_record = time.perf_counter() - t0
        if len(claimed) != batch:
            raise SystemExit(f"round {i}: dispatched {len(sent)}, claimed {len(claimed)}")
        if i >= warmup:
            lat["dispatch"].append(t_dispatch * 1000)
            lat["claim"] += [t * 1000 for t in t_claim]
            lat["record"].append(t_record * 1000)
    return lat


def idle_controller(url: str) -> Controller:
    """A controller with ``kiln controller``'s hooks and order, whose dispatch window is full
    (0), so that a tick is the pass every controller makes while nothing can be sent."""
    kiln = Kiln(Settings(database_url=url, broker_url=REDIS, dispatch_window=0), pool_size=2)
    return Controller(
        kiln,
        send=lambda _d, _b: None,
        hooks=controller_hooks() + scheduling_hooks(kiln),
        order=scheduler_order(kiln),
    )


def measure_idle_pass(ctl: Controller, passes: int) -> list[float]:
    ctl.tick()  # warm up: first recovery, policy load
    out = []
    for _ in range(passes):
        t0 = time.perf_counter()
        ctl.tick()
        out.append((time.perf_counter() - t0) * 1000)
    return out


# --- plans ------------------------------------------------------------------------------


@contextmanager
def capturing(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """Record the SQL statements (with their driver parameters) run on ``engine``."""
    seen: list[tuple[str, Any]] = []

    def before(_conn, _cursor, statement, parameters, _context, executemany):  # type: ignore[no-untyped-def]
        if executemany and isinstance(parameters, list | tuple):
            parameters = parameters[0]
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def explain(
    kiln: Kiln,
    fn: Callable[..., Any],
    *,
    setup: Callable[[sa.Connection], Any] | None = None,
    engine: sa.Engine | None = None,
) -> list[tuple[str, list[str]]]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of each statement ``fn(conn[, setup's value])`` runs on
    ``engine`` (default ``kiln``'s), replayed in order in a transaction that is rolled back;
    ``setup`` runs first in both transactions and is not explained."""
    with kiln.engine.connect() as conn:
        with conn.begin() as txn:
            args = (setup(conn),) if setup else ()
            with capturing(engine or kiln.engine) as stmts:
                fn(conn, *args)
            txn.rollback()
        plans = []
        with conn.begin() as txn:
            if setup:
                setup(conn)
            for sql, params in stmts:
                if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "INSERT", "WITH")):
                    continue
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                plans.append((sql, [r[0] for r in rows]))
            txn.rollback()
    return plans


def print_plans(title: str, plans: list[tuple[str, list[str]]]) -> None:
    print(f"\n--- {title} ---")
    for sql, plan in plans:
        head = " ".join(sql.split())
        print(f"\n> {head[:300]}{' ...' if len(head) > 300 else ''}")
        for line in plan:
            print(f"  {line}")


def execution_ms(plan: list[str]) -> float:
    for line in plan:
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return float("nan")


# --- the real controller ----------------------------------------------------------------


def table_stats(kiln: Kiln) -> dict[str, int]:
    def read(c: sa.Connection) -> dict[str, int]:
        c.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        row = c.execute(
            sa.text(
                "SELECT seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan,"
                " coalesce(idx_tup_fetch, 0) AS idx_tup_fetch"
                " FROM pg_stat_user_tables WHERE relname = 'tasks'"
            )
        ).one()
        return dict(row._mapping)

    return kiln.read(read)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM in kB, and user+system CPU in clock ticks."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu_ticks"] = int(fields[11]) + int(fields[12])
    return out


def run_controller(kiln: Kiln, url: str, seconds: float, log: Path) -> dict[str, float]:
    """Run ``kiln controller`` for ``seconds``; report its peak RSS, CPU and the sequential
    reads of ``tasks`` it caused. Afterwards the tasks it queued are made ready again."""
    redis.Redis.from_url(REDIS).flushdb()
    env = {
        **os.environ,
        "KILN_DATABASE_URL": url,
        "KILN_BROKER_URL": REDIS,
        "KILN_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    before = table_stats(kiln)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli.main", "controller"],
        env=env,
        cwd=ROOT,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    t0 = time.monotonic()
    samples: list[dict[str, int]] = []
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise SystemExit(f"controller exited with {proc.returncode}; see {log}")
            samples.append(proc_status(proc.pid))
        last = proc_status(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # the controller's backends flush their statistics as they exit
    after = table_stats(kiln)
    queued = kiln.read(
        lambda c: c.execute(sa.text("SELECT count(*) FROM tasks WHERE status = 'queued'")).scalar()
    )
    kiln.txn(
        lambda c: c.execute(
            sa.text(
                "UPDATE tasks SET status = 'ready', queued_at = NULL, lease_expires_at = NULL,"
                " dispatch_count = 0 WHERE status = 'queued'"
            )
        )
    )
    redis.Redis.from_url(REDIS).flushdb()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "seconds": elapsed,
        "dispatched": queued,
        "rss_mb": last["VmRSS"] / 1024,
        "hwm_mb": max(s["VmHWM"] for s in [*samples, last]) / 1024,
        "cpu_s": last["cpu_ticks"] / ticks,
        "seq_scans": after["seq_scan"] - before["seq_scan"],
        "seq_rows": after["seq_tup_read"] - before["seq_tup_read"],
        "idx_rows": after["idx_tup_fetch"] - before["idx_tup_fetch"],
    }


# --- main -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--rounds", type=int, default=200, help="dispatch rounds per size")
    ap.add_argument("--batch", type=int, default=8, help="tasks per dispatch")
    ap.add_argument("--passes", type=int, default=20, help="idle controller passes per size")
    ap.add_argument("--controller-seconds", type=float, default=20.0)
    ap.add_argument("--plans", choices=("all", "dispatch", "none"), default="all")
    opts = ap.parse_args()
    sizes = sorted(int(s) for s in opts.sizes.split(","))

    url = fresh_database(DB)
    print("schema: migrations head (the partial indexes of docs/scale.md ship in 0005)")
    kiln = Kiln(Settings(database_url=url, broker_url=REDIS, dispatch_window=2000), pool_size=2)
    ctl = idle_controller(url)
    logs = Path("/tmp/kiln-bench-logs")
    logs.mkdir(exist_ok=True)
    rows = []
    for size in sizes:
        missing = size - ready_count(kiln)
        load_s = add_ready_tasks(kiln, missing) if missing > 0 else 0.0
        ready = ready_count(kiln)
        print(f"\n=== {ready:,} tasks ready (loaded {missing:,} in {load_s:.1f}s) ===", flush=True)

        lat = measure_worker_path(kiln, opts.rounds, opts.batch)
        idle = measure_idle_pass(ctl, opts.passes)

        plan_ms = measure_plans(kiln, ctl, opts.batch, ready, opts.plans)

        proc = run_controller(
            kiln, url, opts.controller_seconds, logs / f"scale-controller-{size}.log"
        )
        row = {
            "ready": ready,
            "dispatch": lat["dispatch"],
            "claim": lat["claim"],
            "record": lat["record"],
            "idle": idle,
            "plan": plan_ms,
            "proc": proc,
        }
        rows.append(row)
        print(_summary(row, opts.batch), flush=True)

    print(f"\n=== summary (batch {opts.batch}, {opts.rounds} rounds per size) ===")
    print(
        f"{'ready':>10} | {'dispatch p50/p99 ms':>19} | {'claim p50/p99 ms':>16} | "
        f"{'record p50/p99':>14} | {'idle pass p50/p99':>17} | {'EXPLAIN d/c/idle ms':>19} | "
        f"{'ctl RSS/peak MB':>15} | {'ctl CPU s':>9} | {'ctl seq rows':>12}"
    )
    for r in rows:
        p = r["proc"]
        plan = r["plan"]
        print(
            f"{r['ready']:>10,} | "
            f"{pct(r['dispatch'], 50):>8.2f} /{pct(r['dispatch'], 99):>8.2f} | "
            f"{pct(r['claim'], 50):>7.2f} /{pct(r['claim'], 99):>6.2f} | "
            f"{pct(r['record'], 50):>6.2f} /{pct(r['record'], 99):>5.2f} | "
            f"{pct(r['idle'], 50):>8.2f} /{pct(r['idle'], 99):>6.2f} | "
            f"{plan.get('dispatch', float('nan')):>6.1f}/{plan.get('claim', float('nan')):>5.2f}/"
            f"{plan.get('idle', float('nan')):>6.1f} | "
            f"{p['rss_mb']:>6.1f} /{p['hwm_mb']:>6.1f} | {p['cpu_s']:>9.2f} | "
            f"{p['seq_rows']:>12,}"
        )
    print(
        "\ndispatch: Kiln.dispatch(batch, order) = kiln.store.dispatch.dispatch_ready_txn; claim: Kiln.claim of"
        " one task; record: Kiln.record of the batch; idle pass: Controller.tick with the hooks"
        " of `kiln controller` and a full window; EXPLAIN: sum of the statements' execution"
        " times; ctl: `kiln controller` subprocess for"
        f" {opts.controller_seconds:g}s (no workers, window 2000), peak = VmHWM, seq rows ="
        " rows of tasks PostgreSQL read by sequential scan meanwhile."
    )
    ctl.kiln.close()
    kiln.close()


def measure_plans(kiln: Kiln, ctl: Controller, batch: int, ready: int, mode: str) -> dict:
    """Print the plans (``mode``: all, dispatch or none); return the summed execution times of
    the dispatch transaction, a claim and an idle pass, ms."""
    if mode == "none":
        return {}
    s = kiln.settings
    out = {}
    dispatch_plans = explain(
        kiln,
        lambda c: dispatch_ready_txn(c, limit=batch, lease_s=s.dispatch_timeout_s, order=ctl.order),
    )
    print_plans(f"dispatch_ready_txn(limit={batch}) at {ready:,} ready", dispatch_plans)
    out["dispatch"] = sum(execution_ms(p) for _, p in dispatch_plans)
    claim_plans = explain(
        kiln,
        lambda c, d: claim_txn(
            c, [(d[0].task_id, d[0].attempt)], worker_id=WORKER, lease_s=s.lease_s
        ),
        setup=lambda c: dispatch_ready_txn(c, limit=1, lease_s=s.dispatch_timeout_s),
    )
    out["claim"] = sum(execution_ms(p) for _, p in claim_plans)
    idle_plans = explain(kiln, lambda _c: _idle_pass(ctl), engine=ctl.kiln.engine)
    out["idle"] = sum(execution_ms(p) for _, p in idle_plans)
    if mode == "all":
        print_plans(f"claim_txn of one task at {ready:,} ready", claim_plans)
        print_plans(f"idle controller pass at {ready:,} ready", idle_plans)
    return out


def _idle_pass(ctl: Controller) -> None:
    """One idle pass, recovery included (it runs every few seconds)."""
    ctl._last_recovery = 0.0  # include the periodic recovery query
    ctl.tick()


def _summary(row: dict, batch: int) -> str:
    p = row["proc"]
    return (
        f"dispatch({batch}) p50 {pct(row['dispatch'], 50):.2f} ms p99 "
        f"{pct(row['dispatch'], 99):.2f} ms (mean {statistics.mean(row['dispatch']):.2f}); "
        f"claim p50 {pct(row['claim'], 50):.2f} ms p99 {pct(row['claim'], 99):.2f} ms; "
        f"record p50 {pct(row['record'], 50):.2f} ms; idle pass p50 {pct(row['idle'], 50):.2f} ms"
        f" p99 {pct(row['idle'], 99):.2f} ms\n"
        f"kiln controller {p['seconds']:.0f}s: dispatched {p['dispatched']}, RSS {p['rss_mb']:.1f}"
        f" MB, peak {p['hwm_mb']:.1f} MB, CPU {p['cpu_s']:.2f}s, tasks read by seq scan "
        f"{p['seq_rows']:,} in {p['seq_scans']} scans, by index {p['idx_rows']:,}"
    )


if __name__ == "__main__":
    main()
