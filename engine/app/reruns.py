"""``kiln.reruns``: rerun a failed or cancelled run from its failure (a new run linked by
``rerun_of`` that reuses the succeeded tasks' results); the SQL is in
:mod:`kiln.store.reruns`."""

from __future__ import annotations

from kiln.app import tracing
from kiln.app.schedules import Specs
from kiln.core.idempotency import IdempotencyKey, scoped
from kiln.store.reruns import rerun_txn

RERUN_SCOPE = "POST /workflows/{workflow_id}/rerun"


class Reruns:
    def __init__(self, kiln: Specs) -> None:
        self._kiln = kiln

    def rerun(
        self, workflow_id: int, *, idempotency_key: str | IdempotencyKey | None = None
    ) -> tuple[int, bool]:
        """Start the rerun of ``workflow_id``; return ``(new run id, created)`` (``created``
        is False when ``idempotency_key`` was used for this rerun before)."""
        key = scoped(
            idempotency_key, RERUN_SCOPE, path={"workflow_id": workflow_id}, body={"from": "failed"}
        )
        with tracing.span("kiln.rerun", rerun_of=workflow_id) as traced:
            new_id, created = self._kiln.txn(
                lambda c: rerun_txn(
                    c,
                    workflow_id,
                    workflow_of=self._kiln.spec_of,
                    idempotency_key=key,
                    trace_context=traced.traceparent,
                )
            )
            traced.set(workflow_id=new_id, created=created)
        return new_id, created
