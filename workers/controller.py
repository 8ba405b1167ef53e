"""The controller loop: recover lost work, run the periodic hooks (operations, instances...),
and dispatch ready tasks to the broker. Any number of controllers may run against one
database: every step claims its rows with ``SKIP LOCKED`` guarded statements."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from kiln.app.runtime import Kiln
from kiln.core.config import Settings
from kiln.core.errors import DatabaseUnavailable
from kiln.store.db import READY_CHANNEL, is_postgres
from kiln.store.dispatch import Dispatch
from kiln.store.maintenance import vacuum_if_bloated
from kiln.store.processes import (
    heartbeat_process_txn,
    live_processes,
    new_process_id,
    register_process_txn,
    stop_process_txn,
)

log = logging.getLogger("kiln.controller")
Hook = Callable[[Kiln], Any]
DEFAULT_CONCURRENCY = 8
# Hooks (operations, instance liveness, ...) are maintenance: they run on the pass after a
# dispatch, but no more often than this, so a burst of wake-ups stays on the fast path.
HOOKS_EVERY_S = 0.02
# On a pass that found nothing to dispatch and nothing sent but unclaimed, vacuum the queue
# tables if a burst left them bloated (kiln.store.maintenance), at most this often.
MAINTENANCE_EVERY_S = 1.0


def send_with_broker(dispatches: Sequence[Dispatch], batch: int) -> None:
    """Send ``dispatches`` as ``kiln_run_tasks`` messages of at most ``batch`` tasks each
    (one each for tasks that must run alone)."""
    from kiln.workers.actors import run_tasks

    for d in dispatches:
        if d.alone:
            run_tasks.send([[d.task_id, d.attempt]])
    shared = [d for d in dispatches if not d.alone]
    for i in range(0, len(shared), batch):
        run_tasks.send([[d.task_id, d.attempt] for d in shared[i : i + batch]])


_pusher_lock = threading.Lock()
_pusher: Any = None


def send_now(dispatches: Sequence[Dispatch]) -> None:
    """``Kiln.sender`` for processes that reach the broker: send what they leased while the
    queue is idle straight to the workers, in batches sized for the default worker
    concurrency. On Redis that is a direct wake-up (``kiln.workers.direct``), which an idle worker
    thread blocked on it takes at once; in-process it is a stub-broker message."""
    global _pusher
    batch = max(1, min(64, math.ceil(len(dispatches) / DEFAULT_CONCURRENCY)))
    with _pusher_lock:
        if _pusher is None:
            from kiln.workers.direct import Pusher

            s = Settings.from_env()
            _pusher = (
                False
                if s.embedded_broker
                else Pusher(s.broker_url, s.queue_name, 2 * s.dispatch_timeout_s)
            )
    if _pusher is False:
        send_with_broker(dispatches, batch)
    else:
        _pusher.push(dispatches, batch)


class Controller:
    def __init__(
        self,
        kiln: Kiln,
        *,
        send: Callable[[Sequence[Dispatch], int], None] = send_with_broker,
        hooks: Iterable[Hook] = (),
        order: Callable[[list[Any]], list[Any]] | None = None,
        recovery_interval_s: float | None = None,
    ) -> None:
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
        self._queued = 0  # tasks sent but not yet claimed, as the last pass counted them
        self._last_hooks = 0.0
        self._concurrency = (0.0, DEFAULT_CONCURRENCY)
        self.process_id = new_process_id("controller")
        self.stats = {"dispatched": 0, "resent": 0, "lost": 0, "quarantined": 0}

    # --- one pass ---------------------------------------------------------------------

    def worker_concurrency(self) -> int:
        """Total threads of live workers (cached for 2 s); sizes the batches."""
        at, value = self._concurrency
        if time.monotonic() - at > 2.0:
            rows = self.kiln.read(
                lambda c: live_processes(c, "worker", stale_after_s=self.settings.lease_s)
            )
            value = sum(r.concurrency for r in rows) or DEFAULT_CONCURRENCY
            self._concurrency = (time.monotonic(), value)
        return value

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
        dispatched = self.dispatch()
        now = time.monotonic()
        if now - self._last_hooks >= HOOKS_EVERY_S:
            self._last_hooks = now
            for hook in self.hooks:
                hook(self.kiln)
        if now - self._last_recovery >= self.recovery_interval_s:
            self.recover()
        idle = not dispatched and self._queued == 0
        if idle and now - self._last_maintenance >= MAINTENANCE_EVERY_S:
            self._last_maintenance = now
            try:
                vacuum_if_bloated(self.kiln.engine)
            except sa.exc.SQLAlchemyError:  # maintenance only: autovacuum still runs
                log.warning("could not vacuum the queue tables", exc_info=True)
        return dispatched

    def dispatch(self) -> int:
        dispatched = 0
        self._queued = self.kiln.queued_count()
        room = self.settings.dispatch_window - self._queued
        while room > 0:
            want = min(room, 1000)
            batch = self.kiln.dispatch(want, order=self.order)
            self.send(batch)
            dispatched += len(batch)
            room -= len(batch)
            if len(batch) < want:
                break
        self.stats["dispatched"] += dispatched
        return dispatched

    # --- the loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set, waking on NOTIFY (PostgreSQL) or every poll interval."""
        registered = False
        listener = None
        last_beat = 0.0
        poll = self.settings.controller_poll_s
        log.info("controller %s started", self.process_id)
        while not stop.is_set():
            try:
                if not registered:
                    self.kiln.txn(lambda c: register_process_txn(c, self.process_id, "controller"))
                    registered = True
                    log.info("controller registered; database reachable")
                if time.monotonic() - last_beat > 2.0:
                    self.kiln.txn(lambda c: heartbeat_process_txn(c, self.process_id))
                    last_beat = time.monotonic()
                if listener is None and is_postgres(self.kiln.engine):
                    listener = _Listener(self.kiln.engine)
                busy = self.tick()
                if busy:
                    continue  # more may be ready; go again at once
                if listener is not None:
                    listener.wait(poll)
                else:
                    stop.wait(poll)
            except (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                log.warning("database unavailable (%s); retrying in 1s", str(exc).splitlines()[0])
                if listener is not None:
                    listener.close()
                    listener = None
                stop.wait(1.0)
        if listener is not None:
            listener.close()
        if registered:
            try:
                self.kiln.txn(lambda c: stop_process_txn(c, self.process_id))
            except Exception:  # noqa: BLE001
                log.warning("could not mark controller stopped", exc_info=True)
        log.info("controller %s stopped", self.process_id)


class _Listener:
    """A dedicated autocommit psycopg connection LISTENing for ready tasks. Its driver errors
    (the server restarting, say) surface as :class:`DatabaseUnavailable`, which the loop
    waits out like any other outage."""

    def __init__(self, engine: sa.Engine) -> None:
        import psycopg

        self._errors = psycopg.Error
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with self._translated():
            self.conn = psycopg.connect(url, autocommit=True)
            self.conn.execute(f"LISTEN {READY_CHANNEL}")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    def wait(self, timeout: float) -> None:
        with self._translated():
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                break
            # Drain whatever else arrived: one pass handles all of it.
            for _ in self.conn.notifies(timeout=0.0, stop_after=1000):
                pass

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
