"""Direct wake-ups, the receiving side: every worker process keeps as many threads blocked
on ``BLPOP`` on its queue's wake-up list (``kiln.transport``) as it has worker threads, so the
first idle one takes work leased while the queue was idle at once.

Concurrency stays what the worker was started with: Dramatiq's threads and the direct
listeners share one set of ``slots``, so a process never runs more tasks at once than its
``--threads``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence

import redis

from kiln.transport import list_key

log = logging.getLogger("kiln.worker")
BLPOP_TIMEOUT_S = 1  # how often an idle listener looks at the stop flag


class Slots:
    """The process's execution slots: a semaphore sized to its worker threads at boot."""

    def __init__(self, size: int = 1) -> None:
        self._sem = threading.BoundedSemaphore(size)

    def resize(self, size: int) -> None:
        self._sem = threading.BoundedSemaphore(max(1, size))

    def hold(self) -> threading.BoundedSemaphore:
        return self._sem  # used as ``with slots.hold():`` (the same object acquires and releases)


slots = Slots()


class DirectListeners:
    """``threads`` daemon threads, each ``BLPOP``-ing the wake-up lists of ``queues`` and
    running what it pops with ``run`` inside one of the process's ``slots``."""

    def __init__(
        self,
        url: str,
        queues: Sequence[str],
        threads: int,
        run: Callable[[list[tuple[int, int]]], None],
        decode: Callable[[object], list[tuple[int, int]] | None],
    ) -> None:
        self._url = url
        self._keys = [list_key(q) for q in queues]
        self._run = run
        self._decode = decode
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._listen, name=f"kiln-direct-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _listen(self) -> None:
        client = redis.Redis.from_url(self._url, socket_timeout=BLPOP_TIMEOUT_S + 5)
        failing = False
        while not self._stop.is_set():
            try:
                popped = client.blpop(self._keys, timeout=BLPOP_TIMEOUT_S)
                if failing:
                    log.warning("direct wake-ups: Redis reachable again")
                    failing = False
            except redis.RedisError:
                if not failing:
                    log.warning("direct wake-ups: Redis unreachable; retrying", exc_info=True)
                failing = True
                self._stop.wait(1.0)
                continue
            if popped is None:
                continue
            self._handle(popped[1])
        client.close()

    def _handle(self, raw: bytes) -> None:
        try:
            items = self._decode(json.loads(raw))
        except ValueError:
            items = None
        if items is None:
            log.error("dropping undecodable direct wake-up: %.200r", raw)
            return
        with slots.hold():
            try:
                self._run(items)
            except Exception:  # noqa: BLE001 - leased in the database; recovery re-runs it
                log.exception("direct wake-up for %s failed; its leases will be recovered", items)
