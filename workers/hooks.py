"""Periodic work the controller runs on every pass besides recovery and dispatch
(operations, instance liveness, ...), collected in one place."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kiln.app.runtime import Kiln
from kiln.store.operations import process_one_txn
from kiln.store.pipelines import sync_statuses_txn
from kiln.store.processes import new_process_id

log = logging.getLogger("kiln.controller")
OPERATIONS_PER_PASS = 100
SYNC_EVERY_S = 0.25
_last_sync = [0.0]


def process_operations(kiln: Kiln, *, claimer: str | None = None) -> int:
    """Apply pending operations (dispatcher and workflow controls), one transaction each,
    oldest first; returns how many were finished this pass."""
    claimer = claimer or _CLAIMER
    done = 0
    while done < OPERATIONS_PER_PASS:
        if kiln.txn(lambda c: process_one_txn(c, claimer)) is None:
            break
        done += 1
    return done


def sync_pipelines(kiln: Kiln) -> int:
    """Write pipelines' statuses from their workflows' (for ``events`` and operators); at
    most every ``SYNC_EVERY_S``. Reads never wait for this: they derive the status."""
    now = time.monotonic()
    if now - _last_sync[0] < SYNC_EVERY_S:
        return 0
    _last_sync[0] = now
    return kiln.txn(lambda c: sync_statuses_txn(c))


_CLAIMER = new_process_id("controller")


def controller_hooks() -> list[Callable[[Any], Any]]:
    return [process_operations, sync_pipelines]
