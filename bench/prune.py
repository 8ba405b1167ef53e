"""Retention at scale (a benchmark, not a test): prune 100,000 finished runs while workflows
are submitted and run, and check that none of the live ones is lost.

The finished runs are bulk-loaded with ``INSERT ... SELECT generate_series`` in the shape the
engine leaves behind (per run: two tasks with an edge, one attempt each, and the six events
of their transitions), finished 40 days ago. Meanwhile the embedded runtime (a controller and
worker threads, in-process broker) runs two-task workflows submitted in a loop, and
``kiln.retention.prune(older_than=30 days)`` deletes the old runs in batches, each batch one
transaction. Printed: total time, runs/s, per-batch p50/p99/max, and the live runs' fate.

    python bench/prune.py [--runs 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import fresh_database, pct  # noqa: E402
from kiln.app.runtime import Kiln  # noqa: E402
from kiln.core.config import Settings  # noqa: E402
from kiln.core.handlers import task  # noqa: E402
from kiln.core.states import WORKFLOW_TERMINAL  # noqa: E402
from kiln.store import retention as ret  # noqa: E402

SEED = """
WITH w AS (
    INSERT INTO workflows (name, status, definition, created_at, started_at, finished_at)
    SELECT 'old-' || g, 'succeeded', '{"name": "old", "tasks": []}'::jsonb,
           now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'
    FROM generate_series(1, :n) AS g
    RETURNING id
), t AS (
    INSERT INTO tasks (workflow_id, name, handler, params, status, attempts, created_at,
                       started_at, finished_at, result)
    SELECT w.id, x.name, 'echo', '{}'::jsonb, 'succeeded', 1, now() - interval '40 days',
           now() - interval '40 days', now() - interval '40 days', '{"ok": true}'::jsonb
    FROM w, (VALUES ('A'), ('B')) AS x(name)
    RETURNING id, workflow_id, name
), a AS (
    INSERT INTO task_attempts (task_id, attempt, worker, outcome, started_at, finished_at)
    SELECT id, 1, 'bench', 'succeeded', now() - interval '40 days', now() - interval '40 days'
    FROM t
), d AS (
    INSERT INTO task_dependencies (task_id, depends_on_id)
    SELECT b.id, a2.id FROM t b JOIN t a2 ON a2.workflow_id = b.workflow_id
    WHERE b.name = 'B' AND a2.name = 'A'
)
INSERT INTO events (entity, entity_id, workflow_id, from_status, to_status, attempt, at)
SELECT 'task', t.id, t.workflow_id, s.f, s.t, 1, now() - interval '40 days'
FROM t, (VALUES ('ready', 'queued'), ('queued', 'running'), ('running', 'succeeded')) AS s(f, t)
"""


@task(name="bench_echo")
def bench_echo(**params: object) -> dict:
    return dict(params)


LIVE = {"name": "live", "tasks": [{"name": "A", "handler": "bench_echo", "params": {"x": 1}},
                                  {"name": "B", "handler": "bench_echo", "depends_on": ["A"],
                                   "params": {"got": "{{A.result.x}}"}}]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=ret.DEFAULT_BATCH)
    args = parser.parse_args()

    url = fresh_database("kiln_bench_prune")
    kiln = Kiln(dataclasses.replace(Settings(database_url=url)), pool_size=8)
    t0 = time.perf_counter()
    for start in range(0, args.runs, 20_000):
        n = min(20_000, args.runs - start)
        kiln.txn(lambda c, n=n: c.execute(sa.text(SEED), {"n": n}))
    kiln.txn(lambda c: c.execute(sa.text("ANALYZE")))
    print(f"seeded {args.runs} finished runs in {time.perf_counter() - t0:.1f} s")

    from kiln.workers.embedded import EmbeddedRuntime

    live: list[int] = []
    stop = threading.Event()

    def submit_loop() -> None:
        while not stop.is_set():
            live.append(kiln.submit(LIVE))
            time.sleep(0.01)

    with EmbeddedRuntime(kiln, threads=4):
        submitter = threading.Thread(target=submit_loop)
        submitter.start()
        time.sleep(1.0)  # live work is flowing before pruning starts
        cut = kiln.read(
            lambda c: ret.cutoffs(
                c, now=dt.datetime.now(dt.UTC), default_days=None,
                older_than=dt.timedelta(days=30),
            )
        )  # fmt: skip
        batches: list[float] = []
        total = ret.Pruned()
        t0 = time.perf_counter()
        while True:
            b0 = time.perf_counter()
            after = total.last_id
            done = kiln.txn(
                lambda c, after=after: ret.prune_batch_txn(c, cut, batch=args.batch, after_id=after)
            )
            batches.append(time.perf_counter() - b0)
            total.add(done)
            if done.runs < args.batch:
                break
        elapsed = time.perf_counter() - t0
        stop.set()
        submitter.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [kiln.run(i)["status"] for i in live]
            if all(s in WORKFLOW_TERMINAL for s in states):
                break
            time.sleep(0.2)
    states = [kiln.run(i)["status"] for i in live]
    left = kiln.read(lambda c: c.execute(sa.text("SELECT count(*) FROM workflows")).scalar())
    print(
        f"pruned {total.runs} runs, {total.tasks} tasks, {total.attempts} attempts, "
        f"{total.events} events in {elapsed:.1f} s ({total.runs / elapsed:.0f} runs/s), "
        f"{len(batches)} batches of {args.batch}: p50 {pct(batches, 50) * 1000:.0f} ms, "
        f"p99 {pct(batches, 99) * 1000:.0f} ms, max {max(batches) * 1000:.0f} ms"
    )
    ok = states.count("succeeded")
    print(f"live runs submitted meanwhile: {len(live)}, succeeded {ok}, still in the "
          f"database {left} (all live: {left == len(live)})")  # fmt: skip
    kiln.close()
    if ok != len(live) or left != len(live) or total.runs != args.runs:
        raise SystemExit("a live run was lost or an old one was left")


if __name__ == "__main__":
    main()
