"""The handler behind a task of kind ``workflow``: ``{"name": "Month", "workflow":
"reports:monthly"}`` starts the named definition as a child run of the task and waits for it
(no worker thread is held meanwhile); the task's result is the child's results."""

from __future__ import annotations

from typing import Any

from kiln.core.task_context import current_task

HANDLER = "kiln.core.workflow_task:run_workflow"


def run_workflow(workflow: str) -> dict[str, Any]:
    return current_task().start_child(workflow, key="workflow").result()
