"""Plain Celery on Redis: W1 and W2 (run by bench/peers/run.py under Celery's venv).

Idiomatic set-up from Celery's "First steps" and "Optimizing" guides: a Redis broker, no
result backend (``task_ignore_result``: nothing reads results here), ``task.delay`` to send,
and the ``celery worker`` command with its default prefork pool. Concurrency 8 =
``celery worker --concurrency 8`` (8 prefork child processes, default prefetch multiplier 4).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

from celery import Celery
from peer_common import URL_ENV, drive, parse_args, record, report, spawn, venv_bin, worker_env

CONCURRENCY = 8

app = Celery("celery_bench", broker=os.environ[URL_ENV])
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(job: int) -> None:
    record(job)


def main() -> None:
    opts = parse_args(__doc__)

    def enqueue_many(jobs: range) -> None:
        for j in jobs:
            noop.delay(j)

    def start_workers() -> list:
        cmd = [
            venv_bin("celery"),
            "--app=celery_bench",
            "worker",
            f"--concurrency={CONCURRENCY}",
            "--loglevel=WARNING",
        ]
        return [spawn(cmd, worker_env(), opts.workdir / "worker.log")]

    figures = drive(
        jobs=opts.jobs,
        w2=opts.w2,
        workdir=opts.workdir,
        enqueue_many=enqueue_many,
        submit=noop.delay,
        start_workers=start_workers,
    )
    report(
        figures,
        peer="Celery",
        version=version("celery"),
        concurrency=f"{CONCURRENCY} prefork procs (`celery worker -c 8`)",
    )


if __name__ == "__main__":
    sys.exit(main())
