"""``Kiln``: the committing, public face of the engine. Each method is one transaction built
from the ``*_txn`` functions, retried when PostgreSQL reports a deadlock or serialization
failure between concurrent workers and controllers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from kiln.app import tracing
from kiln.app.control import Control
from kiln.app.instances import InstancesAPI
from kiln.app.monitor import Monitor
from kiln.app.operations import Operations
from kiln.app.pipelines import Pipelines
from kiln.app.predictor import PredictorAPI
from kiln.app.reruns import Reruns
from kiln.app.retention import Retention
from kiln.app.scheduler import SchedulerAPI
from kiln.app.schedules import Schedules
from kiln.core import handlers
from kiln.core.builder import Workflow
from kiln.core.clock import poll_until
from kiln.core.config import Settings
from kiln.core.definitions import SIGNAL_NAME, WorkflowSpec, parse_definition
from kiln.core.errors import HandlerNotAllowed, InvalidValue, KilnError
from kiln.core.idempotency import SUBMIT_SCOPE, IdempotencyKey, scoped
from kiln.core.limits import check_count, check_json_value
from kiln.core.runs import RunHandle
from kiln.core.states import WORKFLOW_TERMINAL
from kiln.store import children, dispatch, maps, recovery, waits
from kiln.store import tasks as task_ops
from kiln.store import workflows as wf_ops
from kiln.store.base import MIGRATIONS_DIR as MIGRATIONS_DIR  # where tests find migrations
from kiln.store.base import Store
from kiln.store.dialects import open_store
from kiln.store.dispatch import Dispatch
from kiln.store.submit import submit_run_txn, submit_runs_txn

log = logging.getLogger("kiln.runtime")
T = TypeVar("T")
WAIT_POLL_S = 0.2  # Kiln.wait: a modest poll of one row, not a tight loop
SUBMIT_BATCH_MAX = 1000  # Kiln.submit_many: runs per call


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
            pool_size=self.settings.db_pool_size or pool_size,
            ping_after_s=self.settings.db_ping_after_s,
            max_overflow=self.settings.db_max_overflow,
            listen_url=self.settings.listen_url,
            transaction_pooling=self.settings.transaction_pooling,
            prepare_threshold=self.settings.prepare_threshold,
        )
        # A process that can reach the broker sets ``sender``: work it makes ready while the
        # queue is idle is then sent at once instead of waiting for a controller's pass.
        self.sender = sender
        self.monitor = Monitor(self)
        self.control = Control(self)
        self.instances, self.scheduler = InstancesAPI(self), SchedulerAPI(self)
        self.predictor = PredictorAPI(self)
        self.pipelines, self.operations = Pipelines(self), Operations(self)
        self.schedules, self.retention, self.reruns = Schedules(self), Retention(self), Reruns(self)

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
        run, created = self.submit_run(
            definition, idempotency_key=idempotency_key, check_handlers=check_handlers
        )
        return run["id"], created

    def submit_run(
        self,
        definition: dict[str, Any] | WorkflowSpec | Workflow,
        *,
        idempotency_key: str | IdempotencyKey | None = None,
        check_handlers: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """:meth:`submit`, returning the run's summary (``id``, ``name``, ``status``,
        ``error``, ``created_at``, ``started_at``, ``finished_at``) as written, and whether
        it was created (False: replayed by its key)."""
        if isinstance(definition, Workflow):
            definition = definition.to_definition()
        spec = self.spec_of(definition, check_handlers=check_handlers)
        key = _submit_key(idempotency_key, definition, spec)
        lease_s = self.settings.dispatch_timeout_s if self.sender is not None else None
        with tracing.span("kiln.submit", workflow=spec.name) as traced:
            run, created, dispatched = self.txn(
                lambda c: submit_run_txn(
                    c, spec, idempotency_key=key, lease_s=lease_s, trace_context=traced.traceparent
                ),
                single=True,  # on PostgreSQL one statement (insert_run in kiln/store/queries.sql)
            )
            traced.set(workflow_id=run["id"], created=created)
            self._send(dispatched)
        return run, created

    def submit_many(
        self,
        definitions: Sequence[dict[str, Any] | WorkflowSpec | Workflow],
        *,
        idempotency_keys: Sequence[str | IdempotencyKey | None] | None = None,
        check_handlers: bool = True,
    ) -> list[int]:
        """:meth:`submit` for up to ``SUBMIT_BATCH_MAX`` runs in one transaction, each with its
        own idempotency key (or None); their ids in order. All or nothing: an invalid
        definition, or a key used before on another definition, raises the error
        :meth:`submit` would, its message and ``details["index"]`` naming the definition's
        place, and writes nothing."""
        pairs = self.submit_many_with_status(
            definitions, idempotency_keys=idempotency_keys, check_handlers=check_handlers
        )
        return [wf_id for wf_id, _ in pairs]

    def submit_many_with_status(
        self,
        definitions: Sequence[dict[str, Any] | WorkflowSpec | Workflow],
        *,
        idempotency_keys: Sequence[str | IdempotencyKey | None] | None = None,
        check_handlers: bool = True,
    ) -> list[tuple[int, bool]]:
        """:meth:`submit_many`, with whether each run was created (False: replayed by key)."""
        check_count("workflows", len(definitions), SUBMIT_BATCH_MAX, "per batch")
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(definitions)
        if len(keys) != len(definitions):
            raise InvalidValue(
                f"{len(keys)} idempotency keys for {len(definitions)} definitions",
                field="idempotency_keys",
            )
        runs = []
        for i, (definition, key) in enumerate(zip(definitions, keys, strict=True)):
            try:
                if isinstance(definition, Workflow):
                    definition = definition.to_definition()
                spec = self.spec_of(definition, check_handlers=check_handlers)
            except KilnError as exc:
                raise type(exc)(
                    f"workflows[{i}]: {exc.message}", **{**exc.details, "index": i}
                ) from exc
            runs.append((spec, _submit_key(key, definition, spec)))
        if not runs:
            return []
        with tracing.span("kiln.submit_many", runs=len(runs)) as traced:
            return self.txn(
                lambda c: submit_runs_txn(c, runs, trace_context=traced.traceparent),
                # One statement on PostgreSQL; with keys, a replay check may follow it and
                # refuse the batch, so it needs a transaction to roll back.
                single=not any(keys),
            )

    def spec_of(
        self, definition: dict[str, Any] | WorkflowSpec | Workflow, *, check_handlers: bool = True
    ) -> WorkflowSpec:
        """The validated spec of ``definition`` within this deployment's limits, its handlers
        (and the definitions its ``workflow`` tasks name) checked against the allowlist."""
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
            allowed = self.settings.handler_modules
            handlers.check_handlers((t.handler for t in spec.tasks if t.handler), allowed)
            for t in spec.tasks:
                if t.workflow and not handlers.module_allowed(
                    t.workflow.partition(":")[0], allowed
                ):
                    raise HandlerNotAllowed(
                        f"task {t.name!r}: workflow {t.workflow!r} is not allowed: its module "
                        "is not listed in KILN_IMPORTS or KILN_HANDLER_MODULES",
                        handler=t.workflow,
                    )
        return spec

    def start_child(self, task: task_ops.ClaimedTask, definition: Any, key: str) -> int:
        """The child run of the running ``task`` for its try and ``key`` (started now, or the
        one started before); ``definition`` as for :meth:`submit`, or
        ``"package.module:attribute"`` naming one in an allowed module."""
        if isinstance(definition, str):
            definition = handlers.resolve_definition(definition, self.settings.handler_modules)
        spec = self.spec_of(definition)
        with tracing.span("kiln.start_child", task=task.id, key=key) as traced:
            run_id = self.txn(
                lambda c: children.start_child_txn(
                    c,
                    task_id=task.id,
                    attempt=task.attempt,
                    key=key,
                    spec=spec,
                    trace_context=traced.traceparent,
                )
            )
            traced.set(workflow_id=run_id)
        return run_id

    def signal(
        self, workflow_id: int, name: str, payload: Any = None, *, key: str | None = None
    ) -> dict[str, Any]:
        """Send signal ``name`` with ``payload`` (any JSON) to run ``workflow_id``: kept until
        a task of the run waiting for it (kind ``signal``, ``wait_for_signal``) takes it. A
        ``key`` used before for this run and name sends nothing new (``duplicate``)."""
        if not SIGNAL_NAME.fullmatch(name):
            raise InvalidValue(
                "a signal name is 1 to 64 characters among A-Z a-z 0-9 _ . -", field="name"
            )
        if key is not None and not 0 < len(key) <= 200:
            raise InvalidValue("a signal's key is 1 to 200 characters", field="key")
        check_json_value(payload, max_depth=self.settings.max_json_depth, where="payload")
        return self.txn(lambda c: waits.send_signal_txn(c, workflow_id, name, payload, key=key))

    def signals(self, workflow_id: int) -> list[dict[str, Any]]:
        return self.read(lambda c: waits.list_signals(c, workflow_id))

    def take_signal(self, task: task_ops.ClaimedTask, name: str) -> tuple[bool, Any]:
        """For the running ``task``: the payload of a signal ``name`` it may take."""
        return self.txn(
            lambda c: waits.take_signal_txn(
                c, task_id=task.id, attempt=task.attempt, workflow_id=task.workflow_id, name=name
            )
        )

    def wake_due(self) -> int:
        """Waiting tasks whose time came (a sleep ended, a signal's deadline passed) go ready."""
        return self.txn(waits.wake_due_txn)

    def _send(self, dispatched: list[Dispatch]) -> None:
        if not dispatched or self.sender is None:
            return
        try:
            with tracing.span("kiln.send", tasks=len(dispatched)):
                self.sender(dispatched)
        except Exception:  # noqa: BLE001 - leased in the database; the controller re-sends
            log.warning(
                "could not send %d tasks; a controller will re-send them",
                len(dispatched),
                exc_info=True,
            )

    def workflow(self, workflow_id: int, **page: int | None) -> dict[str, Any]:
        """The run and its tasks; ``page``: ``tasks_limit``, ``tasks_after`` (see
        ``get_workflow``)."""
        return self.read(lambda c: wf_ops.get_workflow(c, workflow_id, **page))

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

    def wait(self, workflow_id: int, timeout_s: float, **page: int | None) -> dict[str, Any]:
        """The run with its tasks (``page``: see :meth:`workflow`) once it is terminal, or as
        it is after ``timeout_s``; polls the run's row every ``WAIT_POLL_S``."""
        poll_until(
            lambda: self.run(workflow_id),
            lambda run: run["status"] in WORKFLOW_TERMINAL,
            timeout_s,
            WAIT_POLL_S,
        )
        return self.workflow(workflow_id, **page)

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
        order: Callable[[list[Any], int], list[Any]] | None = None,
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

    def expand_maps(self) -> int:
        """Expand the map tasks whose list now exists into their items (or finish them: an
        empty list, or no list), one transaction per map task; return how many."""
        limit = self.settings.max_map_items

        def expand(map_id: int) -> Callable[[sa.Connection], str | None]:
            return lambda c: maps.expand_map_txn(c, map_id, max_items=limit)

        return sum(self.txn(expand(i)) is not None for i in self.read(maps.ready_map_tasks))

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
            ),
            single=True,  # one UPDATE of leases, no status: it writes no event
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


def _submit_key(
    key: str | IdempotencyKey | None, definition: Any, spec: WorkflowSpec
) -> IdempotencyKey | None:
    """``key`` as given, or a Python caller's plain string key scoped to the definition it
    came with (its body built only then)."""
    if not isinstance(key, str):
        return key
    return scoped(
        key, SUBMIT_SCOPE, body=definition if isinstance(definition, dict) else spec.to_dict()
    )
