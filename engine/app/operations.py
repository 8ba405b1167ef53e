"""``kiln.operations``: interactive-control requests (stop, resume, delete, clone a pipeline;
cancel, pause, resume a workflow). The API records them ``pending``; a controller applies
them (:meth:`Operations.apply_pending`). The SQL is in :mod:`kiln.store.operations`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kiln.app.database import Database
from kiln.core.clock import poll_until
from kiln.core.errors import OperationNotFound
from kiln.core.idempotency import IdempotencyKey, scoped
from kiln.core.operations import UNFINISHED
from kiln.store import operations as ops
from kiln.store import pipelines as pl

if TYPE_CHECKING:
    import sqlalchemy as sa

IC_ID = re.compile(r"^[0-9a-f]{32}$")
POLL_S = 0.1


class Operations:
    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln

    def create(
        self,
        operation: str,
        request_data: dict[str, Any],
        *,
        pipeline_id: int | None = None,
        workflow_id: int | None = None,
        idempotency_key: str | IdempotencyKey | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record a ``pending`` operation and wake the controllers; return ``(row,
        created)``. A key already used on the same request returns its operation unchanged,
        ``created=False``; on another request it raises IdempotencyKeyReused. A plain string
        key is scoped to the operation and its target."""
        key = scoped(
            idempotency_key,
            f"operation {operation}",
            path={"pipeline_id": pipeline_id, "workflow_id": workflow_id},
            body=request_data,
        )
        return self._kiln.txn(
            lambda c: ops.create_operation_txn(
                c,
                operation,
                request_data=request_data,
                pipeline_id=pipeline_id,
                workflow_id=workflow_id,
                idempotency_key=key,
            )
        )

    def on_pipeline(
        self,
        operation: str,
        pipeline_id: int,
        request_data: dict[str, Any],
        *,
        idempotency_key: str | IdempotencyKey | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """:meth:`create` for an existing pipeline (and its backing workflow); raises
        PipelineNotFound. Whether ``operation`` is legal is decided when it is applied."""
        key = scoped(
            idempotency_key,
            f"operation {operation}",
            path={"pipeline_id": pipeline_id},
            body=request_data,
        )

        def write(c: sa.Connection) -> tuple[dict[str, Any], bool]:
            workflow_id = pl.pipeline_target(c, pipeline_id)
            return ops.create_operation_txn(
                c,
                operation,
                request_data=request_data,
                pipeline_id=pipeline_id,
                workflow_id=workflow_id,
                idempotency_key=key,
            )

        return self._kiln.txn(write)

    def get(self, ic_id: str) -> dict[str, Any]:
        """The operation; raises OperationNotFound (also for a malformed id)."""
        if not IC_ID.match(ic_id):
            raise OperationNotFound(f"operation {ic_id} does not exist", ic_id=ic_id)
        return self._kiln.read(lambda c: ops.get_operation(c, ic_id))

    def wait(self, ic_id: str, timeout_s: float) -> dict[str, Any]:
        """The operation once it is completed or failed, or as it is after ``timeout_s``."""
        return poll_until(
            lambda: self.get(ic_id), lambda row: row["status"] not in UNFINISHED, timeout_s, POLL_S
        )

    def list(
        self,
        *,
        status: str | None = None,
        pipeline_id: int | None = None,
        workflow_id: int | None = None,
        operation: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first; returns ``(page, total matching)``."""
        return self._kiln.read(
            lambda c: ops.list_operations(
                c,
                status=status,
                pipeline_id=pipeline_id,
                workflow_id=workflow_id,
                operation=operation,
                limit=limit,
                offset=offset,
            )
        )

    # --- controllers ------------------------------------------------------------------

    def apply_next(self, claimer: str) -> dict[str, Any] | None:
        """Claim the oldest claimable pending operation, apply it and finish it, in one
        transaction. Returns the finished row, or None when nothing was pending."""
        return self._kiln.txn(lambda c: ops.process_one_txn(c, claimer))

    def apply_pending(self, claimer: str, *, limit: int) -> int:
        """:meth:`apply_next` until nothing is pending or ``limit`` are done (one
        transaction each, oldest first); returns how many were finished."""
        done = 0
        while done < limit and self.apply_next(claimer) is not None:
            done += 1
        return done
