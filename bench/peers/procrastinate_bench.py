"""procrastinate on PostgreSQL: W1 and W2 (run by bench/peers/run.py under procrastinate's venv).

Idiomatic set-up from procrastinate's docs: an ``App`` with a ``PsycopgConnector``, an
``async`` task (the docs reserve ``--concurrency`` for async tasks), jobs deferred in bulk
with ``batch_defer_async``, and workers started with the ``procrastinate worker`` command
(LISTEN/NOTIFY on, the default; log level warning, as Kiln's workers in bench/throughput.py). Concurrency 8 = 2 worker processes x ``--concurrency 4``,
so both cores are used, as Kiln's 2 processes x 4 threads.
"""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import version

import procrastinate
from peer_common import (
    URL_ENV,
    drive,
    parse_args,
    record,
    report,
    spawn,
    venv_bin,
    worker_env,
)

PROCESSES, CONCURRENCY = 2, 4
BATCH = 1000

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ[URL_ENV]))


@app.task(name="noop")
async def noop(job: int) -> None:
    record(job)


def main() -> None:
    opts = parse_args(__doc__)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.open_async())
    loop.run_until_complete(app.schema_manager.apply_schema_async())

    def enqueue_many(jobs: range) -> None:
        for first in range(jobs.start, jobs.stop, BATCH):
            batch = [{"job": j} for j in range(first, min(first + BATCH, jobs.stop))]
            loop.run_until_complete(noop.batch_defer_async(*batch))

    def submit(job: int) -> None:
        loop.run_until_complete(noop.defer_async(job=job))

    def start_workers() -> list:
        cmd = [
            venv_bin("procrastinate"),
            "--app=procrastinate_bench.app",
            "--log-level=warning",
            "worker",
            f"--concurrency={CONCURRENCY}",
        ]
        return [spawn(cmd, worker_env(), opts.workdir / f"worker{i}.log") for i in range(PROCESSES)]

    figures = drive(
        jobs=opts.jobs,
        w2=opts.w2,
        workdir=opts.workdir,
        enqueue_many=enqueue_many,
        submit=submit,
        start_workers=start_workers,
    )
    loop.run_until_complete(app.close_async())
    report(
        figures,
        peer="procrastinate",
        version=version("procrastinate"),
        concurrency=f"{PROCESSES} procs x {CONCURRENCY} async (`procrastinate worker -c 4`)",
    )


if __name__ == "__main__":
    main()
