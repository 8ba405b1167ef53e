"""Direct wake-ups: the short path from whoever makes work ready to an idle worker.

Work leased while the queue is idle (``Kiln.sender``, see ``kiln.store.dispatch.dispatch_now_txn``)
does not go through Dramatiq's consumer, which polls Redis and backs off while idle. Its
``(task_id, attempt)`` pairs are pushed onto one Redis list per queue, and every worker
process keeps as many threads blocked on ``BLPOP`` as it has worker threads, so the first
idle one wakes at once. Work the controller dispatches (the busy path, in policy order) still
travels as Dramatiq messages.

A wake-up is not the work: the task is leased ``queued`` in the database before it is pushed.
A wake-up that is lost (a worker killed between ``BLPOP`` and its claim, Redis flushed) leaves
the task leased; when the dispatch lease ends the controller re-sends it as a Dramatiq
message. A stale wake-up is harmless: the claim is fenced by attempt and status. The list
expires after twice the dispatch lease, since anything older has been re-sent already.

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
from kiln.store.dispatch import Dispatch

log = logging.getLogger("kiln.worker")
BLPOP_TIMEOUT_S = 1  # how often an idle listener looks at the stop flag


def list_key(queue: str) -> str:
    return f"kiln:direct:{queue}"


class Slots:
    """The process's execution slots: a semaphore sized to its worker threads at boot."""

    def __init__(self, size: int = 1) -> None:
        self._sem = threading.BoundedSemaphore(size)

    def resize(self, size: int) -> None:
        self._sem = threading.BoundedSemaphore(max(1, size))

    def hold(self) -> threading.BoundedSemaphore:
        return self._sem  # used as ``with slots.hold():`` (the same object acquires and releases)


slots = Slots()


class Pusher:
    """Pushes wake-ups (one client per process; redis-py's pool is thread-safe)."""

    def __init__(self, url: str, queue: str, expire_s: float) -> None:
        self._client = redis.Redis.from_url(url)
        self._key = list_key(queue)
        self._expire_s = max(1, int(expire_s))

    def push(self, dispatches: Sequence[Dispatch], batch: int) -> None:
        """One list item per batch of at most ``batch`` tasks (a task that must run alone
        gets an item of its own), pushed with the list's expiry in one round trip."""
        items = [[[d.task_id, d.attempt]] for d in dispatches if d.alone]
        shared = [[d.task_id, d.attempt] for d in dispatches if not d.alone]
        items += [shared[i : i + batch] for i in range(0, len(shared), batch)]
        if not items:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(self._key, *(json.dumps(i) for i in items))
        pipe.expire(self._key, self._expire_s)
        pipe.execute()


class DirectListeners:
    """``threads`` daemon threads, each ``BLPOP``-ing the queue's wake-up list and running
    what it pops with ``run`` inside one of the process's ``slots``."""

    def __init__(
        self,
        url: str,
        queue: str,
        threads: int,
        run: Callable[[list[tuple[int, int]]], None],
        decode: Callable[[object], list[tuple[int, int]] | None],
    ) -> None:
        self._url = url
        self._key = list_key(queue)
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
                popped = client.blpop([self._key], timeout=BLPOP_TIMEOUT_S)
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
