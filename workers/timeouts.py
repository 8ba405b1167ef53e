"""Per-task time limits inside a worker thread.

Python cannot kill a thread; like Dramatiq's ``TimeLimit`` middleware, one monitor thread per
process raises an asynchronous exception in the thread whose deadline passed. A handler stuck
in C code that never returns to the interpreter is not interrupted this way; its lease stops
being useful to nobody — the controller notices the expired lease once the process dies or the
lease is not renewed.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator


class TaskInterrupted(BaseException):  # noqa: N818 - BaseException so `except Exception` in handlers cannot swallow it
    """Raised inside a handler's thread when its task ran past ``timeout_s``."""


class Deadlines:
    def __init__(self, tick_s: float = 0.02) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}
        self._tick_s = tick_s
        self._thread: threading.Thread | None = None

    def _ensure_monitor(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._monitor, name="kiln-timeouts", daemon=True)
            self._thread.start()

    def _monitor(self) -> None:
        while True:
            time.sleep(self._tick_s)
            now = time.monotonic()
            with self._lock:
                for tid, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[tid]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(tid), ctypes.py_object(TaskInterrupted)
                        )

    @contextlib.contextmanager
    def limit(self, seconds: float | None) -> Iterator[None]:
        if not seconds:
            yield
            return
        tid = threading.get_ident()
        with self._lock:
            self._deadlines[tid] = time.monotonic() + seconds
            self._ensure_monitor()
        try:
            yield
        finally:
            with self._lock:
                self._deadlines.pop(tid, None)


deadlines = Deadlines()
