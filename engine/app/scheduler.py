"""The scheduler as a service: the pure :class:`~kiln.core.scheduling.Scheduler` with its
policy and state persisted in ``scheduler_state`` (``kiln.store.scheduler_state``), the
``order`` the controller dispatches with, placement of ``model_type`` tasks on instances,
stats and the dry run.

Two decisions:

* **order** — the controller's dispatch hands its locked candidates to
  :meth:`SchedulerService.order`, which ranks them with the current policy (read from the
  database, so ``PUT /scheduler/policy`` takes effect on the next pass and re-orders
  everything queued) and holds back ``model_type`` tasks beyond the free slots of the live
  instances serving them: they wait in Kiln's queue, where the policy decides, rather than
  in an instance's FIFO queue.
* **placement** — a worker that claimed a ``model_type`` task calls :func:`place_task_txn`,
  which picks a live instance serving it by the configured strategy (default: minimum
  expected completion over each instance's queued predicted work and its spread).

The state (virtual runtimes, round-robin turn, counters) lives in the controller's memory
between passes and is written back by :meth:`SchedulerService.sync` (a controller hook),
because ``order`` runs inside the dispatch transaction and must not write elsewhere.

``kiln.scheduler`` (:class:`SchedulerAPI`) is the face web and workers use.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kiln.app.database import Database
from kiln.core.errors import InvalidPolicy
from kiln.core.prediction import Estimate, Prediction, estimate
from kiln.core.scheduling import (
    POLICY_NAMES,
    STRATEGIES,
    InstanceLoad,
    InvalidPolicyParams,
    QueuedItem,
    Scheduler,
    SchedulerState,
    UnknownPolicy,
    check_policy_params,
    place,
    policy_or_defaults,
)
from kiln.core.states import TaskStatus
from kiln.store import instances as instance_store
from kiln.store import scheduler_state as state_store
from kiln.store.db import aware, utcnow
from kiln.store.instances import Capacity, LiveInstance, capacity
from kiln.store.scheduler_state import (
    DEFAULT_PLACEMENT,
    DEFAULT_POLICY,
    StoredScheduler,
    load_txn,
)

__all__ = [
    "DEFAULT_PLACEMENT",
    "DEFAULT_POLICY",
    "InvalidPolicy",
    "QUANTUM_MAX_MICROS",
    "PolicyChange",
    "SchedulerAPI",
    "SchedulerService",
    "StoredScheduler",
    "load_txn",
    "place_task_txn",
    "schedule_next",
    "scheduler_of",
    "set_policy_txn",
    "stats",
]

log = logging.getLogger("kiln.scheduler")
# Policies that use actual run times (vruntime, round-robin quantum, the self-tuning of
# Boost, SEPTGuard and LateBudget from measured run times).
LEARNS_FROM_RUN_TIMES = frozenset({"Fair", "RoundRobin", "Boost", "SEPTGuard", "LateBudget"})
SEEN_MAX = 100_000  # candidate ids remembered as arrivals already measured
QUANTUM_MAX_MICROS = 86_400_000_000  # a day: a longer turn is no rotation at all
Warn = Callable[[str], None]


class WarnOnce:
    """Logs each distinct problem once: the controller reads the stored policy on every
    pass, and a bad stored value would otherwise repeat the same warning for good."""

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        with self._lock:
            if message in self._seen:
                return
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen.add(message)
        log.warning("%s", message)


def _bad_params(stored: StoredScheduler, error: InvalidPolicyParams) -> str:
    value = repr(stored.params.get(error.policy))
    value = value if len(value) <= 200 else value[:197] + "..."
    return f"stored {error.policy} params {value} are invalid ({error}); using its defaults"


def scheduler_of(
    stored: StoredScheduler, state: SchedulerState | None = None, *, warn: Warn = log.warning
) -> Scheduler:
    """The stored policy with its stored params. Unusable ones (stored before they were
    checked, or by hand) give way to the defaults and a warning: no reader of the stored
    row may fail on it."""
    state = stored.state if state is None else state
    try:
        scheduler = Scheduler(stored.policy, state, stored.params)
    except UnknownPolicy:
        warn(f"stored scheduling policy {stored.policy!r} is unknown; using {DEFAULT_POLICY}")
        scheduler = Scheduler(DEFAULT_POLICY, state, stored.params)
    if scheduler.params_error is not None:
        warn(_bad_params(stored, scheduler.params_error))
    return scheduler


def set_policy_txn(
    conn: sa.Connection,
    policy: Any,
    params: Any = None,
    *,
    quantum_micros: Any = None,
    placement: Any = None,
) -> StoredScheduler:
    """Switch the ordering policy (exact names only) and optionally its tuning (merged into
    the stored one; each value checked against the policy's ``PARAMS``), the round-robin
    quantum and the placement strategy. The state and counters survive."""
    if not isinstance(policy, str) or policy not in POLICY_NAMES:
        raise InvalidPolicy(
            f"Invalid policy {policy!r}. Must be one of {', '.join(POLICY_NAMES)}",
            valid=list(POLICY_NAMES),
        )
    if params is not None and not isinstance(params, dict):
        raise InvalidPolicy("params must be an object of the policy's tuning parameters")
    stored = load_txn(conn, lock=True)
    previous = stored.params.get(policy, {})
    # Invalid stored tuning (written before it was checked) is dropped, not merged: it
    # would otherwise refuse every later change that does not override it.
    _, previous_error = policy_or_defaults(policy, previous)
    merged = {**(previous if previous_error is None else {}), **(params or {})}
    try:
        check_policy_params(policy, merged)
    except InvalidPolicyParams as exc:
        raise InvalidPolicy(
            f"Invalid params for {policy}: {exc.field} {exc.problem}",
            field=f"params.{exc.field}",
        ) from None
    if quantum_micros is not None:
        if (
            isinstance(quantum_micros, bool)
            or not isinstance(quantum_micros, int)
            or not 1 <= quantum_micros <= QUANTUM_MAX_MICROS
        ):
            raise InvalidPolicy(
                f"quantum_micros must be an integer between 1 and {QUANTUM_MAX_MICROS}",
                field="quantum_micros",
            )
        stored.state.quantum_micros = quantum_micros
    if placement is not None and placement not in STRATEGIES:
        raise InvalidPolicy(
            f"Invalid placement {placement!r}. Must be one of {', '.join(STRATEGIES)}"
        )
    stored.policy = policy
    stored.params = {**stored.params, policy: merged}
    stored.placement = placement or stored.placement
    state_store.write_txn(conn, stored)
    return stored


# --- queue items ------------------------------------------------------------------------


def _seconds(value: dt.datetime | None) -> float:
    value = aware(value)
    return value.timestamp() if value is not None else time.time()


def item_of(row: Any) -> QueuedItem:
    """A task row (id, workflow_id, priority, ready_at/created_at, predicted) as a queue item;
    a workflow is the group round-robin and fair share rotate between."""
    predicted = getattr(row, "predicted", None)
    return QueuedItem(
        # Zero-padded so that ties broken by id follow submission order.
        id=f"{row.id:015d}",
        group=f"workflow:{row.workflow_id}",
        priority=row.priority,
        enqueued_at=_seconds(row.ready_at or row.created_at),
        predicted=Prediction.from_dict(predicted) if predicted else None,
    )


# --- the controller's side --------------------------------------------------------------


class SchedulerService:
    """One controller's scheduler. ``order`` is the ``order=`` callable of the controller;
    ``sync`` (a hook) persists state and learns from finished tasks."""

    def __init__(
        self,
        kiln: Any,
        *,
        policy_refresh_s: float = 0.2,
        persist_every_s: float = 0.5,
        warn: Warn | None = None,
    ) -> None:
        self.kiln = kiln
        self._warn = warn or WarnOnce()
        self.policy_refresh_s = policy_refresh_s
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._dirty = False
        self._finished_after = utcnow()
        self._inflight: dict[str, QueuedItem] = {}
        self._seen: dict[str, None] = {}
        self.scheduler = Scheduler(DEFAULT_POLICY)
        self._persisted_at = -1e9
        self.persist_every_s = persist_every_s

    def _refresh_policy(self) -> None:
        if time.monotonic() - self._loaded_at < self.policy_refresh_s:
            return
        stored = self.kiln.read(load_txn)
        self._loaded_at = time.monotonic()
        self.scheduler.params = stored.params
        try:
            self.scheduler.set_policy(stored.policy)
        except UnknownPolicy:
            self._warn(
                f"stored scheduling policy {stored.policy!r} is unknown; "
                f"keeping {self.scheduler.policy_name}"
            )
        if self.scheduler.params_error is not None:
            self._warn(_bad_params(stored, self.scheduler.params_error))
        # Counters and quanta written by the API (or another controller) win over ours only
        # when we have nothing unsaved.
        if not self._dirty:
            self.scheduler.state = stored.state
        else:
            self.scheduler.state.quantum_micros = stored.state.quantum_micros

    def order(self, candidates: list[Any], limit: int | None = None) -> list[Any]:
        """Rank the locked candidates with the current policy and return the first ``limit``
        (None: all); hold back model_type tasks beyond the free slots of the live instances
        serving them."""
        if not candidates:
            return candidates
        with self._lock:
            self._refresh_policy()
            now = time.time()
            items = [item_of(c) for c in candidates]
            by_id = {item.id: c for item, c in zip(items, candidates, strict=True)}
            if self.scheduler.policy_name in LEARNS_FROM_RUN_TIMES:
                self._note_arrivals(items, now)
            # Exactly the order the simulator's ReadyQueue picks in (bench/schedsim.py).
            ranked = self.scheduler.order(items, now)
            free: Capacity | None = None
            out: list[Any] = []
            for item in ranked:
                if limit is not None and len(out) >= limit:
                    break
                row = by_id[item.id]
                if row.handler is None and row.model_type is not None:
                    if free is None:
                        free = self.kiln.read(capacity)
                    if not free.take(row.model_type):
                        continue
                out.append(row)
                self.scheduler.record_start(item, now)
                self._inflight[item.id] = item
                self._dirty = True
            return out

    def _note_arrivals(self, items: list[QueuedItem], now: float) -> None:
        """Candidates seen for the first time are arrivals: the self-tuning policies measure
        the predicted work queued ahead of each (the candidates enqueued before it)."""
        # Measured once: by this controller, or by another before (the state is shared).
        measured = self.scheduler.state.fifo_waits
        if all(i.id in self._seen or i.id in measured for i in items):
            return
        ahead = 0.0
        for item in sorted(items, key=lambda i: (i.enqueued_at, i.id)):
            if item.id not in self._seen and item.id not in measured:
                self.scheduler.record_arrival(item, now, ahead)
                self._seen[item.id] = None
            ahead += _expected(item)
        while len(self._seen) > SEEN_MAX:
            del self._seen[next(iter(self._seen))]

    def sync(self, kiln: Any = None) -> None:
        """Hook: learn run times of tasks finished since the last pass (only the policies
        that use them, Fair and RoundRobin, pay for the query), and persist the state at
        most every ``persist_every_s``."""
        with self._lock:
            self._refresh_policy()
            if self.scheduler.policy_name in LEARNS_FROM_RUN_TIMES:
                self._learn_finished()
            else:
                # No finish is read under these policies, so nothing would ever leave the
                # running set the self-tuning keeps: it grew to thousands of items, which
                # every arrival walked (the controller spent a second on a pass of 1,000).
                # Nor can FIFO's replay go on without run times: its arrivals (16,384 kept)
                # made the stored state a megabyte, read and rewritten several times a second.
                self._inflight.clear()
                self.scheduler.state.forget_running()
                self._finished_after = utcnow()
            if not self._dirty or time.monotonic() - self._persisted_at < self.persist_every_s:
                return
            state = self.scheduler.state

            def write(conn: sa.Connection) -> None:
                stored = load_txn(conn, lock=True)
                state.quantum_micros = stored.state.quantum_micros
                stored.state = state
                state_store.write_txn(conn, stored)

            self.kiln.txn(write)
            self._dirty = False
            self._persisted_at = time.monotonic()

    def _learn_finished(self) -> None:
        since = self._finished_after
        rows = self.kiln.read(lambda c: state_store.finished_since(c, since))
        for r in rows:
            item = self._inflight.pop(item_of(r).id, None) or item_of(r)
            finished = aware(r.finished_at)
            runtime = r.actual_s
            if runtime is None:
                runtime = max((finished - aware(r.started_at)).total_seconds(), 0.0)
            self.scheduler.record_finish(item, runtime, finished.timestamp())
            self._finished_after = max(self._finished_after, finished)
            self._dirty = True
        if len(self._inflight) > 100_000:
            self._inflight.clear()


def _expected(item: QueuedItem) -> float:
    return estimate(item.predicted).expected if item.predicted else 0.0


# --- placement (workers) ----------------------------------------------------------------


def place_task_txn(
    conn: sa.Connection, task_id: int, attempt: int, model_type: str, instance_task_id: str
) -> LiveInstance | None:
    """Choose the instance a claimed ``model_type`` task runs on and record it on the task
    (fenced by attempt). Returns the chosen live instance, or ``None`` if none serves it."""
    now = utcnow()
    candidates = [
        i for i in instance_store.live_instances(conn, now) if model_type in i.capabilities
    ]
    if not candidates:
        return None
    instance_store.lock_instances_txn(conn, [i.id for i in candidates])
    predicted = instance_store.task_prediction(conn, task_id, attempt)
    stored = load_txn(conn, lock=True)
    loads = _loads(conn, candidates)
    # A task of unknown size counts as one second: queue length and speed then decide.
    task_est = estimate(Prediction.from_dict(predicted)) if predicted else Estimate(expected=1.0)
    inflight = instance_store.inflight_by_instance(conn)
    with_room = [i for i in candidates if inflight.get(i.id, 0) < i.slots] or candidates
    chosen_id = place(
        task_est,
        [loads[i.id] for i in with_room],
        stored.placement,
        turn=stored.placement_turn,
    )
    chosen = next(i for i in candidates if str(i.id) == chosen_id)
    stored.placement_turn += 1
    state_store.write_txn(conn, stored)
    placed = instance_store.assign_instance_txn(conn, task_id, attempt, chosen.id, instance_task_id)
    return chosen if placed else None


def _loads(conn: sa.Connection, candidates: Sequence[LiveInstance]) -> dict[int, InstanceLoad]:
    rows = instance_store.running_predictions(conn, [i.id for i in candidates])
    acc: dict[int, list[float]] = {i.id: [0.0, 0.0, 0] for i in candidates}
    for r in rows:
        est = estimate(Prediction.from_dict(r.predicted)) if r.predicted else None
        entry = acc[r.instance_id]
        entry[0] += est.expected if est else 0.0
        entry[1] += est.variance if est else 0.0
        entry[2] += 1
    by_id = {i.id: i for i in candidates}
    return {
        iid: InstanceLoad(
            id=str(iid),
            # Work spread over the instance's slots finishes that much sooner.
            expected=e / max(by_id[iid].slots, 1),
            variance=v / max(by_id[iid].slots, 1),
            queued=int(n),
            speed_factor=by_id[iid].speed_factor,
        )
        for iid, (e, v, n) in acc.items()
    }


def learn_speed_txn(
    conn: sa.Connection, instance_id: int, predicted: dict | None, actual_s: float
) -> None:
    """Move the instance's speed factor towards actual / predicted (placement uses it)."""
    if not predicted:
        return
    expected = estimate(Prediction.from_dict(predicted)).expected
    if expected <= 0:
        return
    ratio = min(max(actual_s / expected, 0.1), 10.0)
    instance_store.nudge_speed_factor_txn(conn, instance_id, ratio)


# --- the API's side ---------------------------------------------------------------------


def stats(conn: sa.Connection, *, warn: Warn = log.warning) -> dict[str, Any]:
    """Seed 001's stats (``total_scheduled, context_switches, preemptions, active,
    active_processes, policy, quantum_micros``) plus Kiln's queue figures; ``params_error``
    says why stored params are ignored (the policy then runs with its defaults)."""
    stored = load_txn(conn)
    counts = state_store.active_counts(conn)
    scheduler = scheduler_of(stored, warn=warn)
    out = scheduler.stats(active=sum(counts.values()))
    out.update(
        {
            "placement": stored.placement,
            "params": stored.params.get(stored.policy, {}),
            "ready": counts.get(TaskStatus.READY, 0) + counts.get(TaskStatus.RETRYING, 0),
            "queued": counts.get(TaskStatus.QUEUED, 0),
            "running": counts.get(TaskStatus.RUNNING, 0),
            "available_policies": list(POLICY_NAMES),
            "updated_at": stored.updated_at.isoformat(),
            "params_error": str(scheduler.params_error) if scheduler.params_error else None,
        }
    )
    return out


def schedule_next(
    conn: sa.Connection, *, limit: int = 10, warn: Warn = log.warning
) -> dict[str, Any]:
    """Dry run: what would be dispatched next, in order, and why. Changes nothing."""
    stored = load_txn(conn)
    scheduler = scheduler_of(stored, SchedulerState.from_dict(stored.state.to_dict()), warn=warn)
    rows = state_store.queued_rows(conn, limit=2000)
    by_id = {item_of(r).id: r for r in rows}
    decisions = scheduler.explain([item_of(r) for r in rows], time.time(), limit=limit)
    queue = [
        {
            "position": d.position,
            "task_id": int(d.item.id),
            "name": by_id[d.item.id].name,
            "workflow_id": by_id[d.item.id].workflow_id,
            "priority": d.item.priority,
            "model_type": by_id[d.item.id].model_type,
            "predicted_s": round(estimate(d.item.predicted).expected, 6)
            if d.item.predicted
            else None,
            "waiting_reason": by_id[d.item.id].waiting_reason,
            "reason": d.reason,
        }
        for d in decisions
    ]
    body: dict[str, Any] = {
        "success": True,
        "policy": scheduler.policy_name,
        "next_task_id": queue[0]["task_id"] if queue else None,
        "next": queue[0] if queue else None,
        "queue": queue,
        "ready": len(rows),
    }
    if not queue:
        body["message"] = "No tasks ready to schedule"
    return body


# --- the application API ------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyChange:
    previous: str
    current: StoredScheduler


class SchedulerAPI:
    """``kiln.scheduler``: the persisted policy, its dry run and stats, and this process's
    :class:`SchedulerService` for the controller (``order`` and ``sync``)."""

    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln
        self._service: SchedulerService | None = None
        self._service_lock = threading.Lock()
        self._warn = WarnOnce()

    def get(self) -> StoredScheduler:
        """The stored policy, its tuning, the placement strategy and the counters."""
        return self._kiln.read(load_txn)

    def set_policy(
        self,
        policy: Any,
        params: Any = None,
        *,
        quantum_micros: Any = None,
        placement: Any = None,
    ) -> PolicyChange:
        """Switch the policy (see :func:`set_policy_txn`; :class:`InvalidPolicy` for bad
        input); controllers re-order what is queued on their next pass."""

        def change(conn: sa.Connection) -> PolicyChange:
            previous = load_txn(conn).policy
            current = set_policy_txn(
                conn, policy, params, quantum_micros=quantum_micros, placement=placement
            )
            return PolicyChange(previous, current)

        return self._kiln.txn(change)

    def stats(self) -> dict[str, Any]:
        return self._kiln.read(lambda c: stats(c, warn=self._warn))

    def schedule_next(self, limit: int = 10) -> dict[str, Any]:
        """Dry run: what would be dispatched next, in order, and why. Changes nothing."""
        return self._kiln.read(lambda c: schedule_next(c, limit=limit, warn=self._warn))

    @property
    def service(self) -> SchedulerService:
        """This process's scheduler service for this database (shared by order and sync)."""
        with self._service_lock:
            if self._service is None:
                self._service = SchedulerService(self._kiln, warn=self._warn)
            return self._service

    def order(self, candidates: list[Any], limit: int | None = None) -> list[Any]:
        """The controller's ``order=``: see :meth:`SchedulerService.order`."""
        return self.service.order(candidates, limit)

    def sync(self) -> None:
        """A controller hook: see :meth:`SchedulerService.sync`."""
        self.service.sync()

    def place(
        self, task_id: int, attempt: int, model_type: str, instance_task_id: str
    ) -> LiveInstance | None:
        """Place a claimed ``model_type`` attempt on a live instance (see
        :func:`place_task_txn`)."""
        return self._kiln.txn(
            lambda c: place_task_txn(c, task_id, attempt, model_type, instance_task_id)
        )
