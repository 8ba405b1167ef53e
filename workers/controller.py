"""The controller loop: recover lost work, run the periodic hooks (operations, instances...),
and dispatch ready tasks to the broker. Any number of controllers may run against one
database: every step claims its rows with ``SKIP LOCKED`` guarded statements."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kiln import transport
from kiln.app import tracing
from kiln.app.control import OUTAGES
from kiln.app.runtime import Kiln
from kiln.core.execution import Dispatch
from kiln.core.pools import served_queues
from kiln.transport import DEFAULT_CONCURRENCY

log = logging.getLogger("kiln.controller")
Hook = Callable[[Kiln], Any]
# Hooks (operations, instance liveness, ...) are maintenance: they run on the pass after a
# dispatch, but no more often than this, so a burst of wake-ups stays on the fast path.
HOOKS_EVERY_S = 0.02
# On a pass that found nothing to dispatch and nothing sent but unclaimed, vacuum the queue
# tables if a burst left them bloated (``kiln.control.vacuum_if_bloated``), at most this often.
MAINTENANCE_EVERY_S = 1.0
# After its dispatch, a pass refreshes the planner's statistics of the queue tables if a tenth
# of them changed (``kiln.control.analyze_if_stale``), busy or not, at most this often.
ANALYZE_EVERY_S = 5.0
# A pass that finds nothing sent and unclaimed (the workers are idle, or just started) leases
# this many tasks per worker thread first, so they start on them while the rest of the window
# is leased; a lease of 1,000 takes the database over 0.1 s.
FIRST_BATCH_PER_THREAD = 8


class Controller:
    def __init__(
        self,
        kiln: Kiln,
        *,
        send: Callable[[Sequence[Dispatch], int], None] = transport.send,
        hooks: Iterable[Hook] = (),
        order: Callable[[list[Any], int], list[Any]] | None = None,
        recovery_interval_s: float | None = None,
        every_queue: bool = False,
    ) -> None:
        """``every_queue``: the workers consume every queue (the embedded runtime's), so no
        task waits for a worker of its pool."""
        self.kiln = kiln
        self.settings = kiln.settings
        self._send = send
        self.hooks = list(hooks)
        self.order = order
        self.recovery_interval_s = recovery_interval_s or max(
            0.2, min(self.settings.lease_s, self.settings.dispatch_timeout_s) / 5
        )
        self._last_recovery = 0.0
        self._last_maintenance = 0.0
        self._last_analyze = 0.0
        self._analyzing = threading.Lock()
        self._queued = 0  # tasks sent but not yet claimed, as the last pass counted them
        self._last_hooks = 0.0
        self._concurrency = (0.0, DEFAULT_CONCURRENCY)
        self._every_queue = every_queue
        self._queues: frozenset[str] | None = None if every_queue else frozenset()
        self.process_id = kiln.monitor.new_process_id("controller")
        self.stats = {"dispatched": 0, "resent": 0, "lost": 0, "quarantined": 0}

    # --- one pass ---------------------------------------------------------------------

    def worker_concurrency(self) -> int:
        """Total threads of live workers (cached for 2 s); sizes the batches. The same read
        learns which queues live workers consume (:meth:`served_queues`)."""
        at, value = self._concurrency
        if time.monotonic() - at > 2.0:
            rows = self.kiln.monitor.live_processes("worker", stale_after_s=self.settings.lease_s)
            value = sum(r.concurrency for r in rows) or DEFAULT_CONCURRENCY
            self._concurrency = (time.monotonic(), value)
            if not self._every_queue:
                self._queues = served_queues((r.info for r in rows), self.settings.queue_name)
            if self._queues is not None:
                self.kiln.note_unserved_queues(self._queues)
        return value

    def served_queues(self) -> frozenset[str] | None:
        """The named queues live workers consume (None: all), as of :meth:`worker_concurrency`;
        tasks of the others wait, saying so."""
        self.worker_concurrency()
        return self._queues

    def send(self, dispatches: Sequence[Dispatch]) -> None:
        if not dispatches:
            return
        batch = max(
            1, min(self.settings.max_batch, math.ceil(len(dispatches) / self.worker_concurrency()))
        )
        try:
            self._send(dispatches, batch)
        except Exception:  # noqa: BLE001 - leased in the database; re-sent when the lease expires
            log.warning(
                "broker send failed for %d tasks; they will be re-sent after %.0fs",
                len(dispatches),
                self.settings.dispatch_timeout_s,
                exc_info=True,
            )

    def recover(self) -> None:
        self._last_recovery = time.monotonic()
        rec = self.kiln.recover()
        if rec.lost:
            log.warning(
                "re-queued %d tasks whose worker was lost: %s", len(rec.lost), rec.lost[:20]
            )
        if rec.quarantined:
            log.error(
                "quarantined %d undeliverable tasks: %s", len(rec.quarantined), rec.quarantined[:20]
            )
        if rec.resend:
            log.info("re-sending %d dispatched-but-never-started tasks", len(rec.resend))
        self.stats["lost"] += len(rec.lost)
        self.stats["quarantined"] += len(rec.quarantined)
        self.stats["resent"] += len(rec.resend)
        self.send(rec.resend)

    def tick(self) -> int:
        """One pass: dispatch up to the window first (latency), then the hooks (at most every
        ``HOOKS_EVERY_S``) and recovery when due. Returns the number of tasks dispatched."""
        self.kiln.expand_maps()  # map tasks whose list exists: their items, to dispatch now
        self.kiln.wake_due()  # sleeps that ended, signal waits past their deadline
        dispatched = self.dispatch()
        now = time.monotonic()
        if now - self._last_hooks >= HOOKS_EVERY_S:
            self._last_hooks = now
            for hook in self.hooks:
                hook(self.kiln)
            self.kiln.schedules.fire_due()  # each (schedule, fire time) starts one run
        if now - self._last_recovery >= self.recovery_interval_s:
            self.recover()
        if now - self._last_analyze >= ANALYZE_EVERY_S and not self._analyzing.locked():
            # On a thread of its own: an ANALYZE of a large queue takes a tenth of a second,
            # which the next passes' dispatches need not wait for.
            self._last_analyze = now
            threading.Thread(target=self._analyze, name="kiln-analyze", daemon=True).start()
        idle = not dispatched and self._queued == 0
        if idle and now - self._last_maintenance >= MAINTENANCE_EVERY_S:
            self._last_maintenance = now
            self.kiln.control.vacuum_if_bloated()
        self.kiln.retention.prune_expired()  # KILN_RETENTION_DAYS: one short batch when due
        return dispatched

    def _analyze(self) -> None:
        with self._analyzing:
            self.kiln.control.analyze_if_stale()

    def dispatch(self) -> int:
        dispatched = 0
        self._queued = self.kiln.queued_count()
        room = self.settings.dispatch_window - self._queued
        want = FIRST_BATCH_PER_THREAD * self.worker_concurrency() if self._queued == 0 else 1000
        while room > 0:
            want = min(room, want)
            started_ns = time.time_ns()
            batch = self.kiln.dispatch(want, order=self.order, queues=self.served_queues())
            self.send(batch)
            tracing.dispatched(self.kiln, batch, started_ns)  # off: returns at once
            dispatched += len(batch)
            room -= len(batch)
            if len(batch) < want:
                break
            want = 1000
        self.stats["dispatched"] += dispatched
        return dispatched

    # --- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, waking on NOTIFY (PostgreSQL) or every poll interval."""
        registered = False
        listener = None
        listening = False  # LISTEN is on (None: the database has no LISTEN)
        last_beat = 0.0
        poll = self.settings.controller_poll_s
        log.info("controller %s started", self.process_id)
        while not stop.is_set():
            try:
                if not registered:
                    self.kiln.monitor.register_process(self.process_id, "controller")
                    registered = True
                    last_beat = time.monotonic()  # registering was the first heartbeat
                    log.info("controller registered; database reachable")
                if time.monotonic() - last_beat > 2.0:
                    self.kiln.monitor.heartbeat_process(self.process_id)
                    last_beat = time.monotonic()
                busy = self.tick()
                if not listening:
                    # LISTEN (a connection of its own) once this first pass has dispatched:
                    # what became ready before it, the pass right after sees.
                    listener = self.kiln.control.ready_listener()
                    listening = True
                    continue
                if busy:
                    continue  # more may be ready; go again at once
                if listener is not None:
                    listener.wait(poll)
                else:
                    stop.wait(poll)
            except OUTAGES as exc:
                log.warning("database unavailable (%s); retrying in 1s", str(exc).splitlines()[0])
                if listener is not None:
                    listener.close()
                    listener = None
                listening = False
                stop.wait(1.0)
        if listener is not None:
            listener.close()
        if registered:
            try:
                self.kiln.monitor.stop_process(self.process_id)
            except Exception:  # noqa: BLE001
                log.warning("could not mark controller stopped", exc_info=True)
        log.info("controller %s stopped", self.process_id)
