"""The one Dramatiq actor: run a batch of leased tasks. ``dramatiq kiln.workers.actors`` or
``kiln worker`` consume it."""

from __future__ import annotations

import logging
import threading

import dramatiq
from kiln.app.runtime import Kiln
from kiln.core.config import Settings
from kiln.core.handlers import load_imports
from kiln.workers.broker import get_broker
from kiln.workers.direct import DirectListeners, slots
from kiln.workers.executor import execute_batch
from kiln.workers.lifecycle import WorkerLifecycle
from kiln.workers.logging_setup import pop_context, push_context

log = logging.getLogger("kiln.worker")
_settings = Settings.from_env()
broker = get_broker()
_kiln_lock = threading.Lock()
_kiln: Kiln | None = None


def kiln() -> Kiln:
    global _kiln
    with _kiln_lock:
        if _kiln is None:
            load_imports()
            from kiln.workers.controller import send_now

            _kiln = Kiln(_settings, pool_size=16, sender=send_now)
        return _kiln


lifecycle = WorkerLifecycle(kiln)
broker.add_middleware(lifecycle)


def _run_direct(items: list[tuple[int, int]]) -> None:
    ids = [t for t, _ in items]
    token = push_context(
        process_id=lifecycle.process_id(kiln()),
        task_id=ids[0] if len(ids) == 1 else None,
        task_ids=ids if len(ids) > 1 else None,
    )
    try:
        execute_batch(kiln(), items, lifecycle.process_id(kiln()))
    finally:
        pop_context(token)


class DirectWakeups(dramatiq.Middleware):
    """Sizes the process's execution slots to its worker threads and, on Redis, starts as
    many listeners on the queue's direct wake-up list (``kiln.workers.direct``)."""

    def __init__(self) -> None:
        self._listeners: DirectListeners | None = None

    def after_worker_boot(self, broker, worker):  # type: ignore[no-untyped-def]
        threads = getattr(worker, "worker_threads", 1)
        slots.resize(threads)
        if _settings.embedded_broker:
            return  # in-process: everything goes through the stub broker
        self._listeners = DirectListeners(
            _settings.broker_url, _settings.queue_name, threads, _run_direct, _decode
        )
        self._listeners.start()

    def before_worker_shutdown(self, broker, worker):  # type: ignore[no-untyped-def]
        if self._listeners is not None:
            self._listeners.stop()
            self._listeners = None


broker.add_middleware(DirectWakeups())


def _decode(items: object) -> list[tuple[int, int]] | None:
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


@dramatiq.actor(actor_name="kiln_run_tasks", queue_name=_settings.queue_name, broker=broker)
def run_tasks(items: object) -> None:
    """Claim and run ``[[task_id, attempt], ...]``. A payload that cannot be decoded is
    dropped with an error in the log: its tasks stay leased in the database, are re-sent by
    the controller, and are quarantined if they keep failing to arrive."""
    decoded = _decode(items)
    if decoded is None:
        log.error("dropping undecodable kiln_run_tasks payload: %.200r", items)
        return
    with slots.hold():
        execute_batch(kiln(), decoded, lifecycle.process_id(kiln()))
