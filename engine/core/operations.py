"""Operations (interactive-control requests) as plain data: their kinds and lifecycle.

=============  ===============  =====================================================
from           to               by
=============  ===============  =====================================================
(new row)      pending          the API (``kiln.operations.request...``)
pending        processing       a controller's claim (``FOR UPDATE SKIP LOCKED`` and a
                                guarded ``UPDATE ... WHERE status = 'pending'``)
processing     completed        the operation was applied
processing     failed           it was illegal (with a readable ``error``) or broke
=============  ===============  =====================================================
"""

from __future__ import annotations

import enum

# stop/resume/delete/clone act on pipelines (seed 004); cancel/pause/resume on workflows.
OPERATION_KINDS = ("stop", "resume", "delete", "clone", "cancel", "pause")


class OperationStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


OPERATION_STATES = tuple(s.value for s in OperationStatus)
OPERATION_TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    OperationStatus.PENDING: frozenset({OperationStatus.PROCESSING}),
    OperationStatus.PROCESSING: frozenset({OperationStatus.COMPLETED, OperationStatus.FAILED}),
    OperationStatus.COMPLETED: frozenset(),
    OperationStatus.FAILED: frozenset(),
}
UNFINISHED = [OperationStatus.PENDING.value, OperationStatus.PROCESSING.value]
