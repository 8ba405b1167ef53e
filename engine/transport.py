"""Sending work to workers: Dramatiq messages and direct wake-ups.

A message is only a wake-up call carrying ``(task_id, attempt)`` pairs: the task is leased
``queued`` in the database before it is sent, so a lost message loses nothing (the controller
re-sends it when the dispatch lease ends) and a stale one changes nothing (the claim is fenced
by attempt and status). So the broker gets none of Dramatiq's retry or time-limit middleware.

Two paths:

* **Messages** (:meth:`Transport.send`): what the controller dispatches, in policy order, as
  ``kiln_run_tasks`` messages on each task's queue (its worker pool; ``Dispatch.queue``, None
  for the default queue). Sent by actor name, so the sender needs no actor.
* **Direct wake-ups** (:meth:`Transport.send_now`, the ``Kiln.sender`` of processes that reach
  the broker): work leased while the queue is idle skips Dramatiq's consumer, which polls
  Redis and backs off while idle. Its pairs are pushed onto one Redis list per queue that every
  worker process keeps threads blocked on (``kiln.workers.direct``), so the first idle one
  wakes at once. The list expires after twice the dispatch lease, since anything older has
  been re-sent already. With the in-process broker they are plain messages.

Importing this module builds nothing: a process's transport is built from the environment on
first use (:func:`current`), or installed by whoever starts the process (:func:`use`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import ShutdownNotifications

from kiln.core.config import Settings
from kiln.core.execution import Dispatch

RUN_TASKS = "kiln_run_tasks"  # the one actor (``kiln.workers.actors``)
# Batches are sized for this many worker threads when nobody has counted them.
DEFAULT_CONCURRENCY = 8


def build_broker(settings: Settings) -> dramatiq.Broker:
    """Redis in production, an in-process stub in the embedded default."""
    middleware: list[dramatiq.Middleware] = [ShutdownNotifications()]
    if settings.embedded_broker:
        return StubBroker(middleware=middleware)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=settings.broker_url, middleware=middleware)


def list_key(queue: str) -> str:
    """The Redis list of ``queue``'s direct wake-ups."""
    return f"kiln:direct:{queue}"


def by_queue(dispatches: Sequence[Dispatch], default: str) -> dict[str, list[Dispatch]]:
    """``dispatches`` grouped by the queue their tasks run on, keeping their order."""
    groups: dict[str, list[Dispatch]] = {}
    for d in dispatches:
        groups.setdefault(d.queue or default, []).append(d)
    return groups


def payloads(dispatches: Sequence[Dispatch], batch: int) -> list[list[list[int]]]:
    """``[[task_id, attempt], ...]`` lists of at most ``batch`` tasks; a task that must run
    alone gets a list of its own."""
    out = [[[d.task_id, d.attempt]] for d in dispatches if d.alone]
    shared = [[d.task_id, d.attempt] for d in dispatches if not d.alone]
    out += [shared[i : i + batch] for i in range(0, len(shared), batch)]
    return out


class Pusher:
    """Pushes direct wake-ups (one client per process; redis-py's pool is thread-safe)."""

    def __init__(self, url: str, queue: str, expire_s: float) -> None:
        self._client = redis.Redis.from_url(url)
        self._queue = queue
        self._expire_s = max(1, int(expire_s))

    def push(self, dispatches: Sequence[Dispatch], batch: int) -> None:
        """One list item per payload (:func:`payloads`) on its queue's list, pushed with the
        lists' expiry in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for queue, group in by_queue(dispatches, self._queue).items():
            key = list_key(queue)
            pipe.rpush(key, *(json.dumps(i) for i in payloads(group, batch)))
            pipe.expire(key, self._expire_s)
        if len(pipe):
            pipe.execute()


class Transport:
    """Where one process sends work: a broker and its default queue, and on Redis a
    :class:`Pusher`. ``one_queue``: send every task to ``queue`` whatever its own (the embedded
    runtime's workers serve every queue)."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        queue: str,
        pusher: Pusher | None = None,
        *,
        one_queue: bool = False,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.pusher = pusher
        self.one_queue = one_queue

    @classmethod
    def from_settings(cls, settings: Settings) -> Transport:
        pusher = None
        if not settings.embedded_broker:
            expire_s = 2 * settings.dispatch_timeout_s
            pusher = Pusher(settings.broker_url, settings.queue_name, expire_s)
        return cls(build_broker(settings), settings.queue_name, pusher)

    def send(self, dispatches: Sequence[Dispatch], batch: int) -> None:
        """Send ``dispatches`` as ``kiln_run_tasks`` messages of at most ``batch`` tasks, each
        on its tasks' queue."""
        groups = {self.queue: list(dispatches)} if self.one_queue else None
        for queue, group in (groups or by_queue(dispatches, self.queue)).items():
            for items in payloads(group, batch):
                self.broker.enqueue(
                    dramatiq.Message(
                        queue_name=queue, actor_name=RUN_TASKS, args=(items,), kwargs={},
                        options={},
                    )
                )  # fmt: skip

    def send_now(self, dispatches: Sequence[Dispatch]) -> None:
        """Send what was leased while the queue is idle straight to the workers, in batches
        sized for the default worker concurrency: direct wake-ups on Redis, messages on the
        in-process broker."""
        batch = max(1, min(64, math.ceil(len(dispatches) / DEFAULT_CONCURRENCY)))
        if self.pusher is None:
            self.send(dispatches, batch)
        else:
            self.pusher.push(dispatches, batch)


_lock = threading.Lock()
_current: Transport | None = None


def use(transport: Transport) -> None:
    """Make ``transport`` this process's (the embedded runtime installs its own broker)."""
    global _current
    with _lock:
        _current = transport


def current() -> Transport:
    """This process's transport, built from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Transport.from_settings(Settings.from_env())
        return _current


def send(dispatches: Sequence[Dispatch], batch: int) -> None:
    """:meth:`Transport.send` on this process's transport (the controller's default)."""
    current().send(dispatches, batch)


def send_now(dispatches: Sequence[Dispatch]) -> None:
    """:meth:`Transport.send_now` on this process's transport: ``Kiln.sender`` for processes
    that reach the broker."""
    current().send_now(dispatches)
