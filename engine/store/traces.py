"""The trace context stored with each run (``workflows.trace_context``), read for the spans
of those who work on its tasks without reading the run (``kiln.app.tracing``)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from kiln.store.schema import workflows


def trace_contexts(conn: sa.Connection, workflow_ids: Iterable[int]) -> dict[int, str]:
    """``{run id: traceparent}`` of the given runs that were submitted traced."""
    ids = sorted(set(workflow_ids))
    if not ids:
        return {}
    rows = conn.execute(
        sa.select(workflows.c.id, workflows.c.trace_context).where(
            workflows.c.id.in_(ids), workflows.c.trace_context.is_not(None)
        )
    )
    return {r.id: r.trace_context for r in rows}
