"""The embedded default: a worker pool and a controller inside the current process, on the
in-process broker, so Kiln runs with no servers at all (``kiln demo``, ``kiln run``)."""

from __future__ import annotations

import logging
import threading

import dramatiq
from kiln.app.runtime import Kiln
from kiln.workers.controller import Controller

log = logging.getLogger("kiln.embedded")


class EmbeddedRuntime:
    """Start with ``with EmbeddedRuntime(kiln) as rt: ...``; stops cleanly on exit."""

    def __init__(self, kiln: Kiln, *, threads: int = 4, hooks=(), order=None) -> None:  # type: ignore[no-untyped-def]
        if not kiln.settings.embedded_broker:
            raise ValueError("EmbeddedRuntime needs the in-process broker (KILN_BROKER_URL unset)")
        import kiln.workers.actors as actors
        from kiln.workers.controller import send_now

        kiln.sender = kiln.sender or send_now
        actors._kiln = kiln  # the worker threads share this process's Kiln handle
        self.kiln = kiln
        self.broker = actors.broker
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)
        self.controller = Controller(kiln, hooks=hooks, order=order)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.controller.run, args=(self._stop,), name="kiln-controller", daemon=True
        )

    def __enter__(self) -> EmbeddedRuntime:
        self.worker.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.worker.stop(timeout=10_000)
