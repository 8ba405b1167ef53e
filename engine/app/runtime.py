"""``Kiln``: the committing, public face of the engine. Each method is one transaction built
from the ``*_txn`` functions, retried when PostgreSQL reports a deadlock or serialization
failure between concurrent workers and controllers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import sqlalchemy as sa

from kiln.app.control import Control
from kiln.app.instances import InstancesAPI
from kiln.app.monitor import Monitor
from kiln.app.operations import Operations
from kiln.app.pipelines import Pipelines
from kiln.app.predictor import PredictorAPI
from kiln.app.scheduler import SchedulerAPI
from kiln.core import handlers
from kiln.core.clock import poll_until
from kiln.core.config import Settings
from kiln.core.definitions import Workflow, WorkflowSpec, parse_definition
from kiln.core.idempotency import SUBMIT_SCOPE, IdempotencyKey, scoped
from kiln.core.limits import check_count
from kiln.core.runs import RunHandle
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.store import dispatch, recovery
from kiln.store import tasks as task_ops
from kiln.store import workflows as wf_ops
from kiln.store.base import MIGRATIONS_DIR as MIGRATIONS_DIR  # where tests find migrations
from kiln.store.base import Store
from kiln.store.dialects import open_store
from kiln.store.dispatch import Dispatch
from kiln.store.submit import submit_run_txn

log = logging.getLogger("kiln.runtime")
T = TypeVar("T")
WAIT_POLL_S = 0.2  # Kiln.wait: a modest poll of one row, not a tight loop


class Kiln:
    """A handle on one Kiln database. Thread-safe; create one per process."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        pool_size: int = 5,
        sender: Callable[[list[Dispatch]], None] | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.store: Store = open_store(
            self.settings.database_url,
            pool_size=pool_size,
            ping_after_s=self.settings.db_ping_after_s,
        )
        # A process that can reach the broker sets ``sender``: work it makes ready while the
        # queue is idle is then sent at once instead of waiting for a controller's pass.
        self.sender = sender
        self.monitor = Monitor(self)
        self.control = Control(self)
        self.instances, self.scheduler = InstancesAPI(self), SchedulerAPI(self)
        self.predictor = PredictorAPI(self)
        self.pipelines, self.operations = Pipelines(self), Operations(self)

    @property
    def engine(self) -> sa.Engine:
        return self.store.engine

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name: ``postgresql`` or ``sqlite``."""
        return self.store.dialect

    @property
    def wakes_by_listen(self) -> bool:
        """Controllers can sleep on ``LISTEN`` and be woken when work becomes ready."""
        return self.store.wakes_by_listen

    def close(self) -> None:
        self.store.close()

    def txn(
        self, fn: Callable[[sa.Connection], T], *, attempts: int = 8, single: bool = False
    ) -> T:
        """Run ``fn`` in a transaction and commit; retry it on deadlock/serialization errors.
        ``single``: ``fn`` makes one statement that changes anything (see ``Store.txn``)."""
        return self.store.txn(fn, attempts=attempts, single=single)

    def read(self, fn: Callable[[sa.Connection], T]) -> T:
        return self.store.read(fn)

    def upgrade(self) -> None:
        """Migrate the database to the newest schema (what ``kiln db upgrade`` does)."""
        self.store.upgrade()

    # --- workflows --------------------------------------------------------------------

    def submit(
        self,
        definition: dict[str, Any] | WorkflowSpec | Workflow,
        *,
        idempotency_key: str | IdempotencyKey | None = None,
        check_handlers: bool = True,
    ) -> int:
        """Validate and store a workflow run; return its id. Nothing is written when the
        definition is invalid (:class:`~kiln.core.errors.InvalidDefinition`), larger than
        ``settings.max_workflow_tasks`` or nested deeper than ``settings.max_json_depth``
        (:class:`~kiln.core.errors.LimitExceeded`). With ``idempotency_key`` used before: the
        same definition returns that run, another raises IdempotencyKeyReused."""
        return self.submit_with_status(
            definition, idempotency_key=idempotency_key, check_handlers=check_handlers
        )[0]

    def submit_with_status(
        self,
        definition: dict[str, Any] | WorkflowSpec | Workflow,
        *,
        idempotency_key: str | IdempotencyKey | None = None,
        check_handlers: bool = True,
    ) -> tuple[int, bool]:
        limits = self.settings
        if isinstance(definition, Workflow):
            definition = definition.to_definition()
        if isinstance(definition, WorkflowSpec):
            check_count(
                "tasks", len(definition.tasks), limits.max_workflow_tasks, "KILN_MAX_WORKFLOW_TASKS"
            )
            spec = definition
        else:
            spec = parse_definition(
                definition,
                max_tasks=limits.max_workflow_tasks,
                max_depth=limits.max_json_depth,
                max_timeout_s=limits.max_timeout_s,
            )
        if check_handlers:
            handlers.check_handlers(
                (t.handler for t in spec.tasks if t.handler), self.settings.handler_modules
            )

        key = scoped(
            idempotency_key,
            SUBMIT_SCOPE,
            body=definition if isinstance(definition, dict) else spec.to_dict(),
        )
        lease_s = self.settings.dispatch_timeout_s if self.sender is not None else None
        wf_id, created, dispatched = self.txn(
            lambda c: submit_run_txn(c, spec, idempotency_key=key, lease_s=lease_s),
            single=True,  # on PostgreSQL one statement (insert_run in kiln/store/queries.sql)
        )
        self._send(dispatched)
        return wf_id, created

    def _send(self, dispatched: list[Dispatch]) -> None:
        if not dispatched or self.sender is None:
            return
        try:
            self.sender(dispatched)
        except Exception:  # noqa: BLE001 - leased in the database; the controller re-sends
            log.warning(
                "could not send %d tasks; a controller will re-send them",
                len(dispatched),
                exc_info=True,
            )

    def workflow(self, workflow_id: int) -> dict[str, Any]:
        return self.read(lambda c: wf_ops.get_workflow(c, workflow_id))

    def run(self, workflow_id: int) -> dict[str, Any]:
        """The run without its tasks (:class:`~kiln.core.errors.WorkflowNotFound` if none)."""
        return self.read(lambda c: wf_ops.get_run(c, workflow_id))

    def workflows(self, **filters: Any) -> list[dict[str, Any]]:
        return self.read(lambda c: wf_ops.list_workflows(c, **filters))

    def start(
        self,
        definition: dict[str, Any] | WorkflowSpec | Workflow,
        *,
        idempotency_key: str | IdempotencyKey | None = None,
    ) -> RunHandle:
        """:meth:`submit`, returning a handle to wait on (``.wait()``, ``.result()``)."""
        return RunHandle(self, self.submit(definition, idempotency_key=idempotency_key))

    def wait(self, workflow_id: int, timeout_s: float) -> dict[str, Any]:
        """The run with its tasks once it is terminal, or as it is after ``timeout_s``; polls
        the run's row every ``WAIT_POLL_S``."""
        poll_until(
            lambda: self.run(workflow_id),
            lambda run: run["status"] in WORKFLOW_TERMINAL,
            timeout_s,
            WAIT_POLL_S,
        )
        return self.workflow(workflow_id)

    def cancel(self, workflow_id: int) -> None:
        self.txn(lambda c: wf_ops.cancel_workflow_txn(c, workflow_id))

    def pause(self, workflow_id: int) -> int:
        return self.txn(lambda c: wf_ops.pause_workflow_txn(c, workflow_id))

    def resume(self, workflow_id: int) -> None:
        self.txn(lambda c: wf_ops.resume_workflow_txn(c, workflow_id))

    # --- execution (used by controllers and workers) ------------------------------------

    def dispatch(
        self,
        limit: int,
        order: Callable[[list[Any]], list[Any]] | None = None,
        queues: Collection[str] | None = None,
    ) -> list[Dispatch]:
        """Lease up to ``limit`` ready tasks; of named queues only those in ``queues`` (the
        ones live workers consume; None: all)."""
        return self.txn(
            lambda c: dispatch.dispatch_ready_txn(
                c,
                limit=limit,
                lease_s=self.settings.dispatch_timeout_s,
                order=order,
                queues=queues,
            )
        )

    def note_unserved_queues(self, queues: Collection[str]) -> int:
        """Ready tasks of a queue not in ``queues`` (no live worker consumes it) say so in
        ``waiting_reason``."""
        return self.txn(lambda c: dispatch.note_unserved_queues_txn(c, queues))

    def queued_count(self) -> int:
        return self.read(dispatch.queued_count)

    def claim(self, items: Iterable[tuple[int, int]], worker_id: str) -> list[task_ops.ClaimedTask]:
        items = list(items)
        return self.txn(
            lambda c: task_ops.claim_txn(
                c, items, worker_id=worker_id, lease_s=self.settings.lease_s
            ),
            single=True,  # on PostgreSQL one statement (claim in kiln/store/queries.sql)
        )

    def record(self, outcomes: list[task_ops.Outcome]) -> task_ops.RecordReport:
        report = self.txn(
            lambda c: task_ops.record_outcomes_txn(
                c,
                outcomes,
                retry_base_s=self.settings.retry_base_s,
                retry_max_s=self.settings.retry_max_s,
                dispatch_lease_s=self.settings.dispatch_timeout_s if self.sender else None,
            )
        )
        self._send(report.dispatched)
        return report

    def recover(self) -> recovery.Recovery:
        s = self.settings
        return self.txn(
            lambda c: recovery.recover_txn(
                c,
                lease_s=s.lease_s,
                dispatch_timeout_s=s.dispatch_timeout_s,
                retry_base_s=s.retry_base_s,
                retry_max_s=s.retry_max_s,
            )
        )

    def heartbeat_leases(
        self, worker_id: str, held: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Extend ``held`` leases; return the pairs whose handlers should stop."""
        return self.txn(
            lambda c: recovery.heartbeat_leases_txn(
                c, worker_id, held, lease_s=self.settings.lease_s
            )
        )

    def lost_leases(self, worker_id: str, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The pairs of ``held`` no longer running under that attempt on ``worker_id``."""
        return self.read(lambda c: recovery.lost_leases_txn(c, worker_id, held))

    def report_progress(
        self, task_id: int, attempt: int, fraction: float, message: str | None
    ) -> bool:
        return self.txn(
            lambda c: recovery.report_progress_txn(
                c, task_id, attempt, fraction, message, lease_s=self.settings.lease_s
            )
        )
