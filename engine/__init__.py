"""Kiln: durable DAG workflows on a database-backed job queue.

What users write workflows with; everything else in the
subpackages (``kiln.core``, ``kiln.store``, ``kiln.app``...) is internal.
"""

from kiln.app.runtime import Kiln
from kiln.client import Client
from kiln.core.definitions import Workflow, index, item, parse_definition
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
