"""Plain Dramatiq on Redis: W1 and W2 (run by bench/peers/run.py under Dramatiq's venv).

Idiomatic set-up from Dramatiq's user guide: a ``RedisBroker``, an ``@dramatiq.actor`` with the
default middleware, messages sent with ``actor.send``, and workers started with the
``dramatiq`` command. Concurrency 8 = ``dramatiq --processes 2 --threads 4`` (the same split as
Kiln's workers, which are themselves Dramatiq actors; this is Dramatiq without Kiln's durable
PostgreSQL state).

Deviation: ``dramatiq_worker_timeout=2`` (ms) in the workers' environment. An idle Redis
consumer backs off up to this long between polls; the default, 1,000 ms, put W2's p50 at
about half a second in trial runs. 2 ms is Dramatiq's best case for W2 (it costs an idle
worker about 40 % of a core in polling). Kiln's own workers poll at 20 ms
(``KILN_WORKER_POLL_MS``) and take work sent to an idle queue from a blocking ``BLPOP``
instead (``workers/direct.py``).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from peer_common import URL_ENV, drive, parse_args, record, report, spawn, venv_bin, worker_env

PROCESSES, THREADS = 2, 4
WORKER_TIMEOUT_MS = "2"

broker = RedisBroker(url=os.environ[URL_ENV])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop(job: int) -> None:
    record(job)


def main() -> None:
    opts = parse_args(__doc__)

    def enqueue_many(jobs: range) -> None:
        for j in jobs:
            noop.send(j)

    def start_workers() -> list:
        cmd = [
            venv_bin("dramatiq"),
            "dramatiq_bench",
            f"--processes={PROCESSES}",
            f"--threads={THREADS}",
        ]
        env = worker_env(dramatiq_worker_timeout=WORKER_TIMEOUT_MS)
        return [spawn(cmd, env, opts.workdir / "worker.log")]

    figures = drive(
        jobs=opts.jobs,
        w2=opts.w2,
        workdir=opts.workdir,
        enqueue_many=enqueue_many,
        submit=noop.send,
        start_workers=start_workers,
    )
    report(
        figures,
        peer="Dramatiq",
        version=version("dramatiq"),
        concurrency=(
            f"{PROCESSES} procs x {THREADS} threads (`dramatiq -p 2 -t 4`, worker timeout 2 ms)"
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
