"""pgqueuer on PostgreSQL: W1 and W2 (run by bench/peers/run.py under pgqueuer's venv).

Idiomatic set-up from pgqueuer's README: a factory returning a ``PgQueuer`` over an asyncpg
connection, an ``async`` entrypoint, bulk ``Queries.enqueue`` with lists, and workers started
through ``pgqueuer.run(factory, ...)``, the documented in-code form of ``pgq run``
(LISTEN/NOTIFY wake-ups, the default). The ``pgq run`` command itself fails in pgqueuer 1.6.0
while setting up logging (AttributeError: 'str' object has no attribute 'name').

Concurrency 8 = 2 worker processes x ``max_concurrent_tasks=4``. pgqueuer requires
``max_concurrent_tasks >= 2 x batch_size``, so the batch size is 2 (default 10, which with
no cap would let one process hold far more than 8 jobs at once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib.metadata import version

import asyncpg
import pgqueuer
from peer_common import (
    URL_ENV,
    drive,
    parse_args,
    record,
    report,
    spawn,
    worker_env,
)
from pgqueuer import Job, PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver

PROCESSES, MAX_CONCURRENT_TASKS, BATCH_SIZE = 2, 4, 2
ENQUEUE_BATCH = 1000


@asynccontextmanager
async def create_pgqueuer() -> AsyncIterator[PgQueuer]:
    """The factory each worker process runs (pgqueuer 1.6 wants an async context manager)."""
    connection = await asyncpg.connect(os.environ[URL_ENV])
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        record(int(job.payload or b"-1"))

    try:
        yield pgq
    finally:
        await connection.close()


def worker() -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(
        pgqueuer.run(
            create_pgqueuer,
            batch_size=BATCH_SIZE,
            max_concurrent_tasks=MAX_CONCURRENT_TASKS,
            dequeue_timeout=timedelta(seconds=30),
        )
    )


def main() -> None:
    opts = parse_args(__doc__)
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(os.environ[URL_ENV]))
    queries = Queries(AsyncpgDriver(connection))
    loop.run_until_complete(queries.install())

    def enqueue_many(jobs: range) -> None:
        for first in range(jobs.start, jobs.stop, ENQUEUE_BATCH):
            batch = range(first, min(first + ENQUEUE_BATCH, jobs.stop))
            loop.run_until_complete(
                queries.enqueue(
                    ["noop"] * len(batch), [str(j).encode() for j in batch], [0] * len(batch)
                )
            )

    def submit(job: int) -> None:
        loop.run_until_complete(queries.enqueue("noop", str(job).encode()))

    def start_workers() -> list:
        cmd = [sys.executable, __file__, "worker"]
        return [spawn(cmd, worker_env(), opts.workdir / f"worker{i}.log") for i in range(PROCESSES)]

    figures = drive(
        jobs=opts.jobs,
        w2=opts.w2,
        workdir=opts.workdir,
        enqueue_many=enqueue_many,
        submit=submit,
        start_workers=start_workers,
    )
    loop.run_until_complete(connection.close())
    report(
        figures,
        peer="pgqueuer",
        version=version("pgqueuer"),
        concurrency=(
            f"{PROCESSES} procs x {MAX_CONCURRENT_TASKS} async "
            f"(`pgqueuer.run(max_concurrent_tasks=4, batch_size=2)`)"
        ),
    )


if __name__ == "__main__":
    worker() if sys.argv[1:] == ["worker"] else main()
