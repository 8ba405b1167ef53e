"""The one Dramatiq actor, ``kiln_run_tasks``: run a batch of leased tasks. Built on a broker
by :func:`build_actors` when a worker starts (``kiln worker``, the embedded runtime);
importing this module declares nothing."""

from __future__ import annotations

import logging

import dramatiq

from kiln.app.logs import pop_context, push_context
from kiln.app.runtime import Kiln
from kiln.transport import RUN_TASKS
from kiln.workers.direct import DirectListeners, slots
from kiln.workers.executor import execute_batch
from kiln.workers.lifecycle import WorkerLifecycle
from kiln.workers.pipeline_shards import register_shard_handler

log = logging.getLogger("kiln.worker")


def decode(items: object) -> list[tuple[int, int]] | None:
    """``[[task_id, attempt], ...]`` as pairs, or None when the payload is not that."""
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            return None
        out.append((item[0], item[1]))
    return out


class DirectWakeups(dramatiq.Middleware):
    """Sizes the process's execution slots to its worker threads and, on Redis, starts as
    many listeners on the queue's direct wake-up list (``kiln.workers.direct``)."""

    def __init__(
        self, kiln: Kiln, lifecycle: WorkerLifecycle, queues: list[str] | None = None
    ) -> None:
        self._kiln = kiln
        self._lifecycle = lifecycle
        self._queues = queues or [kiln.settings.queue_name]
        self._listeners: DirectListeners | None = None

    def _run(self, items: list[tuple[int, int]]) -> None:
        ids = [t for t, _ in items]
        process_id = self._lifecycle.process_id()
        token = push_context(
            process_id=process_id,
            task_id=ids[0] if len(ids) == 1 else None,
            task_ids=ids if len(ids) > 1 else None,
        )
        try:
            execute_batch(self._kiln, items, process_id)
        finally:
            pop_context(token)

    def after_worker_boot(self, broker, worker):  # type: ignore[no-untyped-def]
        threads = getattr(worker, "worker_threads", 1)
        slots.resize(threads)
        settings = self._kiln.settings
        if settings.embedded_broker:
            return  # in-process: everything goes through the stub broker
        self._listeners = DirectListeners(
            settings.broker_url, self._queues, threads, self._run, decode
        )
        self._listeners.start()

    def before_worker_shutdown(self, broker, worker):  # type: ignore[no-untyped-def]
        if self._listeners is not None:
            self._listeners.stop()
            self._listeners = None


def build_actors(
    broker: dramatiq.Broker, kiln: Kiln, queues: list[str] | None = None
) -> dramatiq.Actor:
    """Declare ``kiln_run_tasks`` on ``broker`` (on ``kiln``'s queue) and ``queues`` besides
    (a worker pool, ``kiln worker --queues``; None: every queue, which the embedded runtime's
    one-queue transport sends everything to), with the middleware that registers the worker,
    keeps its leases alive and listens for direct wake-ups."""
    register_shard_handler(kiln)
    lifecycle = WorkerLifecycle(kiln, queues)
    broker.add_middleware(lifecycle)
    broker.add_middleware(DirectWakeups(kiln, lifecycle, queues))
    for queue in queues or ():
        broker.declare_queue(queue)

    @dramatiq.actor(actor_name=RUN_TASKS, queue_name=kiln.settings.queue_name, broker=broker)
    def run_tasks(items: object) -> None:
        """Claim and run ``[[task_id, attempt], ...]``. A payload that cannot be decoded is
        dropped with an error in the log: its tasks stay leased in the database, are re-sent
        by the controller, and are quarantined if they keep failing to arrive."""
        decoded = decode(items)
        if decoded is None:
            log.error("dropping undecodable kiln_run_tasks payload: %.200r", items)
            return
        with slots.hold():
            execute_batch(kiln, decoded, lifecycle.process_id())

    return run_tasks
