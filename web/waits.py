"""Long polls (``?wait=``) hold a request thread each while they wait, so one web process lets
only ``KILN_MAX_WAITERS`` wait at once and answers the rest 429 with ``Retry-After`` at once:
however many waits arrive, short requests such as ``/health`` still find a free thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app

from kiln.core.errors import KilnError
from kiln.web.common import kiln

RETRY_AFTER_S = 1


class TooManyWaiters(KilnError):
    """Too many requests are waiting already; retry later, or without wait."""

    status_code = 429
    retry_after_s = RETRY_AFTER_S


def _slots() -> threading.BoundedSemaphore:
    slots = current_app.extensions.get("kiln_wait_slots")
    if slots is None:
        # setdefault is atomic: two first requests at once still share one semaphore.
        slots = current_app.extensions.setdefault(
            "kiln_wait_slots", threading.BoundedSemaphore(max(0, kiln().settings.max_waiters))
        )
    return slots


@contextmanager
def wait_slot() -> Iterator[None]:
    """Hold one of this process's wait slots for the block; raises :class:`TooManyWaiters`
    (without blocking) when all are taken."""
    slots = _slots()
    if not slots.acquire(blocking=False):
        raise TooManyWaiters(limit=kiln().settings.max_waiters, retry_after_s=RETRY_AFTER_S)
    try:
        yield
    finally:
        slots.release()
