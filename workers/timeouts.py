"""Per-task time limits.

A handler with ``timeout_s`` runs in its own thread while the worker thread waits at most
that long. Past the deadline the worker records the attempt as timed out and moves on; the
task's cancel flag is set (``current_task().cancelled``; an async handler's coroutine is
cancelled) so the handler can stop cleanly; one that is still running ``INTERRUPT_GRACE_S``
later gets an asynchronous :class:`TaskInterrupted` (delivered as soon as it executes Python
code again — a blocking C call such as ``time.sleep`` finishes first). Anything it returns
after the deadline is discarded.
"""

from __future__ import annotations

import contextvars
import ctypes
import math
import threading
from collections.abc import Callable
from typing import Any

INTERRUPT_GRACE_S = 1.0


class TaskInterrupted(BaseException):  # noqa: N818 - BaseException: `except Exception` in a handler must not swallow it
    """Raised inside an abandoned handler thread whose task ran past ``timeout_s``."""


class TimedOut(Exception):  # noqa: N818
    """The handler did not finish within its time limit."""


def call_with_timeout(
    fn: Callable[[], Any],
    seconds: float | None,
    on_timeout: Callable[[], None] | None = None,
) -> Any:
    """Return ``fn()``, re-raising its exception; raise :class:`TimedOut` after ``seconds``
    (calling ``on_timeout`` first, before the handler thread is interrupted).
    A limit past what a timer can wait (``threading.TIMEOUT_MAX``, or not finite) waits that
    long instead of raising ``OverflowError``."""
    if not seconds:
        return fn()
    # Rows stored before timeout_s was bounded may hold 1e10, inf or nan.
    if not math.isfinite(seconds) or seconds > threading.TIMEOUT_MAX:
        seconds = threading.TIMEOUT_MAX
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["result"] = ctx.run(fn)
        except TaskInterrupted:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="kiln-handler", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if on_timeout is not None:
            on_timeout()
        interrupt = threading.Timer(INTERRUPT_GRACE_S, _interrupt, args=(thread,))
        interrupt.daemon = True
        interrupt.start()
        raise TimedOut()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _interrupt(thread: threading.Thread) -> None:
    if thread.is_alive() and thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(TaskInterrupted)
        )
