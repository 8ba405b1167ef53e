"""Closing one attempt's row in ``task_attempts`` (the history of claims), where a worker's
outcome for it is recorded: its result, failure, wait, or ``stale`` when the attempt no
longer owned its task."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from kiln.store.schema import task_attempts


def close_attempt_txn(
    conn: sa.Connection,
    task_id: int,
    attempt: int,
    *,
    outcome: str,
    finished_at: dt.datetime,
    error: str | None = None,
) -> None:
    """``running`` -> ``outcome`` for attempt ``attempt`` of task ``task_id``."""
    values: dict[str, object] = {"outcome": outcome, "finished_at": finished_at}
    if error is not None:
        values["error"] = error
    conn.execute(
        task_attempts.update()
        .where(
            task_attempts.c.task_id == task_id,
            task_attempts.c.attempt == attempt,
            task_attempts.c.outcome == "running",
        )
        .values(**values)
    )
