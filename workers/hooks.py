"""Periodic work the controller runs on every pass besides recovery and dispatch
(operations, instance liveness, ...), collected in one place."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kiln.app.monitor import Monitor
from kiln.app.runtime import Kiln

log = logging.getLogger("kiln.controller")
OPERATIONS_PER_PASS = 100
SYNC_EVERY_S = 0.25
_last_sync = [0.0]


def process_operations(kiln: Kiln, *, claimer: str | None = None) -> int:
    """Apply pending operations (dispatcher and workflow controls), one transaction each,
    oldest first; returns how many were finished this pass."""
    return kiln.operations.apply_pending(claimer or _CLAIMER, limit=OPERATIONS_PER_PASS)


def sync_pipelines(kiln: Kiln) -> int:
    """Write pipelines' statuses from their workflows' (for ``events`` and operators); at
    most every ``SYNC_EVERY_S``. Reads never wait for this: they derive the status."""
    now = time.monotonic()
    if now - _last_sync[0] < SYNC_EVERY_S:
        return 0
    _last_sync[0] = now
    return kiln.pipelines.sync_statuses()


# Operations claimed by this process's hooks name it (a string; nothing is registered).
_CLAIMER = Monitor.new_process_id("controller")


def controller_hooks() -> list[Callable[[Any], Any]]:
    return [process_operations, sync_pipelines]
