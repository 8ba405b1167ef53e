"""The embedded default: a worker pool and a controller inside the current process, on the
in-process broker, so Kiln runs with no servers at all (``kiln demo``, ``kiln run``)."""

from __future__ import annotations

import logging
import threading

import dramatiq

from kiln import transport
from kiln.app.runtime import Kiln
from kiln.workers.actors import build_actors
from kiln.workers.controller import Controller

log = logging.getLogger("kiln.embedded")


class EmbeddedRuntime:
    """Start with ``with EmbeddedRuntime(kiln) as rt: ...``; stops cleanly on exit."""

    def __init__(self, kiln: Kiln, *, threads: int = 4, hooks=(), order=None) -> None:  # type: ignore[no-untyped-def]
        if not kiln.settings.embedded_broker:
            raise ValueError("EmbeddedRuntime needs the in-process broker (KILN_BROKER_URL unset)")
        # A broker of its own, made this process's transport: what the controller and
        # ``kiln.sender`` send reaches this runtime's worker threads.
        self.broker = transport.build_broker(kiln.settings)
        build_actors(self.broker, kiln)
        transport.use(transport.Transport(self.broker, kiln.settings.queue_name, one_queue=True))
        kiln.sender = kiln.sender or transport.send_now
        self.kiln = kiln
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)
        self.controller = Controller(kiln, hooks=hooks, order=order, every_queue=True)
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
