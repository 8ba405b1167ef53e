"""Kiln: durable DAG workflows on a database-backed job queue.

What users write workflows with; everything else in ``engine`` is internal.
"""

from engine.context import current_task, report_progress
from engine.definitions import Workflow, parse_definition
from engine.errors import InvalidDefinition, KilnError, PermanentFailure
from engine.registry import task
from engine.runtime import Kiln

__all__ = [
    "InvalidDefinition",
    "Kiln",
    "KilnError",
    "PermanentFailure",
    "Workflow",
    "current_task",
    "parse_definition",
    "report_progress",
    "task",
]
