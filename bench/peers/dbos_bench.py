"""DBOS queues on PostgreSQL: W1 and W2 (run by bench/peers/run.py under DBOS's venv).

Idiomatic set-up from DBOS's queue tutorial and client reference: each job is a
``@DBOS.workflow``; worker processes are DBOS applications (``DBOS(config).launch()``) each
with its own ``executor_id``, dequeuing from a queue registered with ``worker_concurrency``;
the enqueuer is a ``DBOSClient`` (W1 enqueues 1,000 per transaction with
``enqueue_in_transaction``, W2 one ``enqueue`` per job). Schema: ``dbos migrate``.

Concurrency 8 = 2 processes x ``worker_concurrency=4``. Deviation: DBOS polls each queue every
``polling_interval_sec`` (default 1 s, and a poll claims at most ``worker_concurrency``), which
would hold W1 to about 8 jobs/s (2 processes x 4 per poll) and W2 to about half a second; the
queue is registered with ``polling_interval_sec=0.01`` instead (10 ms; Kiln's workers poll
their Dramatiq consumer at 20 ms and take idle-queue work from a blocking Redis ``BLPOP``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from importlib.metadata import version

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, EnqueueOptions
from peer_common import URL_ENV, drive, parse_args, record, report, spawn, venv_bin, worker_env

PROCESSES, WORKER_CONCURRENCY, POLLING_INTERVAL_S = 2, 4, 0.01
APP, QUEUE = "kiln-bench", "bench"
ENQUEUE_BATCH = 1000


@DBOS.workflow(name="noop")
def noop(job: int) -> None:
    record(job)


def worker(executor_id: str) -> None:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    DBOS(
        config={
            "name": APP,
            "system_database_url": os.environ[URL_ENV],
            "executor_id": executor_id,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    DBOS.register_queue(
        QUEUE, worker_concurrency=WORKER_CONCURRENCY, polling_interval_sec=POLLING_INTERVAL_S
    )
    stopping.wait()
    DBOS.destroy()


def main() -> None:
    opts = parse_args(__doc__)
    url = os.environ[URL_ENV]
    subprocess.run(
        [venv_bin("dbos"), "migrate", "--sys-db-url", url], check=True, stdout=sys.stderr
    )
    client = DBOSClient(system_database_url=url, application_name=APP)
    client.register_queue(
        QUEUE, worker_concurrency=WORKER_CONCURRENCY, polling_interval_sec=POLLING_INTERVAL_S
    )
    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"))
    options: EnqueueOptions = {"queue_name": QUEUE, "workflow_name": "noop"}

    def enqueue_many(jobs: range) -> None:
        for first in range(jobs.start, jobs.stop, ENQUEUE_BATCH):
            with engine.begin() as conn:
                for j in range(first, min(first + ENQUEUE_BATCH, jobs.stop)):
                    client.enqueue_in_transaction(conn, options, j)

    def submit(job: int) -> None:
        client.enqueue(options, job)

    def start_workers() -> list:
        return [
            spawn(
                [sys.executable, __file__, "worker", f"w{i}"],
                worker_env(),
                opts.workdir / f"worker{i}.log",
            )
            for i in range(PROCESSES)
        ]

    figures = drive(
        jobs=opts.jobs,
        w2=opts.w2,
        workdir=opts.workdir,
        enqueue_many=enqueue_many,
        submit=submit,
        start_workers=start_workers,
    )
    client.destroy()
    engine.dispose()
    report(
        figures,
        peer="DBOS queues",
        version=version("dbos"),
        concurrency=(
            f"{PROCESSES} procs x {WORKER_CONCURRENCY} threads "
            f"(`worker_concurrency=4`, `polling_interval_sec=0.01`)"
        ),
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2])
    else:
        main()
