"""Dramatiq middleware that makes a worker process visible and keeps its leases alive:
registration in ``processes``, a heartbeat thread extending the leases of every task this
process is running (and flagging those cancelled meanwhile), and a clean deregistration on
shutdown."""

from __future__ import annotations

import logging
import threading
import time

import dramatiq

from kiln.app.logs import pop_context, push_context
from kiln.app.runtime import Kiln
from kiln.core.pools import worker_info
from kiln.workers.executor import held_for

log = logging.getLogger("kiln.worker")
# How often a worker running tasks asks which of them were cancelled (one small read per
# process): a cancel reaches running handlers within about this long.
CANCEL_POLL_S = 0.5
LOST = "its run was cancelled, or another attempt took it over"
_tokens = threading.local()  # per worker thread: the log context of the message it runs


def _task_ids(message) -> list[int]:  # type: ignore[no-untyped-def]
    items = message.args[0] if message.args else None
    if not isinstance(items, list):
        return []
    return [i[0] for i in items if isinstance(i, list | tuple) and i and isinstance(i[0], int)]


class WorkerLifecycle(dramatiq.Middleware):
    def __init__(self, kiln: Kiln, queues: list[str] | None = None) -> None:
        """``queues``: the ones this worker consumes, recorded in its ``processes`` row for the
        controllers (None: every queue, the embedded runtime)."""
        self._kiln = kiln
        self._queues = queues
        self._id: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.concurrency = 1

    def before_worker_boot(self, broker, worker):  # type: ignore[no-untyped-def]
        # A fresh identity per worker boot (the embedded runtime may boot several in turn),
        # made before the boot starts the worker's threads: a message they take before
        # ``after_worker_boot`` registers this boot's identity, which then stays. (Made after,
        # it replaced the identity a running task was claimed under, and the heartbeat then
        # found that task's lease lost and cancelled it.)
        with self._lock:
            self.concurrency = getattr(worker, "worker_threads", 1)
            self._stop.set()
            self._stop = threading.Event()
            self._id = None

    def after_worker_boot(self, broker, worker):  # type: ignore[no-untyped-def]
        try:
            self.process_id()
        except Exception:  # noqa: BLE001 - registration is retried on the first message
            log.warning("could not register worker at boot; will retry", exc_info=True)

    def process_id(self) -> str:
        """This process's id, registering it (and starting the heartbeat) on first use."""
        with self._lock:
            if self._id is None:
                monitor = self._kiln.monitor
                pid = monitor.new_process_id("worker")
                monitor.register_process(
                    pid, "worker", concurrency=self.concurrency, info=worker_info(self._queues)
                )
                self._id = pid
                log.info(
                    "worker registered with %d threads; database reachable",
                    self.concurrency,
                    extra={"process_id": pid},
                )
                self._thread = threading.Thread(
                    target=self._beat, name="kiln-lease-heartbeat", daemon=True
                )
                self._thread.start()
            return self._id

    def _beat(self) -> None:
        kiln = self._kiln
        interval = kiln.settings.lease_s / 3
        failing = False
        next_beat = time.monotonic() + interval
        while not self._stop.wait(min(CANCEL_POLL_S, interval)):
            if time.monotonic() < next_beat:
                self._poll_cancels()
                continue
            next_beat = time.monotonic() + interval
            try:
                held = held_for(kiln)
                held.cancel(kiln.heartbeat_leases(self._id, held.snapshot()), LOST)
                kiln.monitor.heartbeat_process(self._id)
                if failing:
                    log.warning("lease heartbeat works again; database reachable")
                    failing = False
            except Exception:  # noqa: BLE001 - keep beating; the database may be back soon
                failing = True
                log.warning(
                    "lease heartbeat failed; retrying in %.1fs",
                    interval,
                    exc_info=True,
                    extra={"process_id": self._id},
                )

    def _poll_cancels(self) -> None:
        """Between heartbeats, flag the held tasks cancelled meanwhile: one read, made only
        while this process runs tasks. A failure is left to the next heartbeat to report."""
        held = held_for(self._kiln)
        pairs = held.snapshot()
        if not pairs or self._id is None:
            return
        try:
            held.cancel(self._kiln.lost_leases(self._id, pairs), LOST)
        except Exception:  # noqa: BLE001
            log.debug("cancel poll failed", exc_info=True)

    def before_process_message(self, broker, message):  # type: ignore[no-untyped-def]
        """Log lines while this message runs carry its task ids (one task: ``task_id``)."""
        ids = _task_ids(message)
        # The worker's id goes on these lines, not process-wide: the embedded runtime runs a
        # controller in the same process.
        _tokens.token = push_context(
            process_id=self._id,
            message_id=message.message_id,
            task_id=ids[0] if len(ids) == 1 else None,
            task_ids=ids if len(ids) > 1 else None,
        )
        log.debug("running %d task(s)", len(ids))

    def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        token = getattr(_tokens, "token", None)
        if token is not None:
            _tokens.token = None
            pop_context(token)

    after_skip_message = after_process_message

    def after_worker_shutdown(self, broker, worker):  # type: ignore[no-untyped-def]
        # Not before: while Dramatiq waits for the running handlers to finish, their leases
        # are still extended and a cancel still reaches them.
        self._stop.set()
        if self._id is not None:
            try:
                self._kiln.monitor.stop_process(self._id)
            except Exception:  # noqa: BLE001
                log.warning("could not mark worker %s stopped", self._id, exc_info=True)
