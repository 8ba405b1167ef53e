"""Kiln: durable DAG workflows on a database-backed job queue.

What users write workflows with; everything else in the
subpackages (``kiln.core``, ``kiln.store``, ``kiln.app``...) is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kiln.core.builder import Workflow, index, item
from kiln.core.definitions import parse_definition
from kiln.core.errors import (
    InvalidDefinition,
    KilnError,
    PermanentFailure,
    RunCancelled,
    RunFailed,
    SignalTimeout,
    TaskCancelled,
)
from kiln.core.handlers import task
from kiln.core.runs import RunHandle
from kiln.core.task_context import current_task, report_progress

if TYPE_CHECKING:
    from kiln.app.runtime import Kiln
    from kiln.client import Client

# Imported on first use (PEP 562): ``import kiln`` in a handler module, or a worker process
# importing ``kiln.workers``, pays for neither the runtime's store and SQLAlchemy nor requests.
_LAZY = {"Kiln": "kiln.app.runtime", "Client": "kiln.client"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


__all__ = [
    "Client",
    "InvalidDefinition",
    "Kiln",
    "KilnError",
    "PermanentFailure",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "SignalTimeout",
    "TaskCancelled",
    "Workflow",
    "current_task",
    "index",
    "item",
    "parse_definition",
    "report_progress",
    "task",
]
