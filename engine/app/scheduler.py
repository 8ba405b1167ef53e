"""The scheduler as a service: the pure :class:`~engine.scheduling.Scheduler` with its policy
and state persisted in ``scheduler_state``, the ``order`` the controller dispatches with,
placement of ``model_type`` tasks on instances, stats and the dry run.

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
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from kiln.core.errors import KilnError
from kiln.core.prediction import Estimate, Prediction, estimate
from kiln.core.scheduling import (
    POLICY_NAMES,
    STRATEGIES,
    InstanceLoad,
    QueuedItem,
    Scheduler,
    SchedulerState,
    UnknownPolicy,
    make_policy,
    place,
)
from kiln.core.states import TaskStatus
from kiln.store.db import aware, utcnow
from kiln.store.dispatch import dispatchable_tasks
from kiln.store.instances import Capacity, capacity, inflight_by_instance, live_instances
from kiln.store.schema import instances, scheduler_state, tasks
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger("kiln.scheduler")
DEFAULT_POLICY = "FIFO"
DEFAULT_PLACEMENT = "min_expected_completion"
# Policies whose record_finish uses actual run times (vruntime, round-robin quantum).
LEARNS_FROM_RUN_TIMES = frozenset({"Fair", "RoundRobin"})
ACTIVE = [TaskStatus.READY, TaskStatus.RETRYING, TaskStatus.QUEUED, TaskStatus.RUNNING]


class InvalidPolicy(KilnError):
    """Invalid policy. Must be one of FIFO, RoundRobin, Priority, Fair, ShortestPredicted."""

    status_code = 400


# --- persisted row ----------------------------------------------------------------------


@dataclass
class StoredScheduler:
    policy: str
    params: dict[str, dict[str, Any]]
    placement: str
    state: SchedulerState
    placement_turn: int
    updated_at: dt.datetime


def _default_row() -> dict[str, Any]:
    return {
        "id": 1,
        "policy": DEFAULT_POLICY,
        "params": {},
        "placement": DEFAULT_PLACEMENT,
        "state": {**SchedulerState().to_dict(), "placement_turn": 0},
        "updated_at": utcnow(),
    }


def load_txn(conn: sa.Connection, *, lock: bool = False) -> StoredScheduler:
    q = sa.select(scheduler_state).where(scheduler_state.c.id == 1)
    row: Mapping[Any, Any] | None = (
        conn.execute(q.with_for_update() if lock else q).mappings().first()
    )
    if row is None and lock:
        insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
        conn.execute(
            insert(scheduler_state)
            .values(_default_row())
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = conn.execute(q.with_for_update()).mappings().first()
    if row is None:
        row = _default_row()
    state = dict(row["state"] or {})
    turn = int(state.pop("placement_turn", 0))
    known = set(SchedulerState().to_dict())
    return StoredScheduler(
        policy=row["policy"],
        params=dict(row["params"] or {}),
        placement=row["placement"],
        state=SchedulerState.from_dict({k: v for k, v in state.items() if k in known}),
        placement_turn=turn,
        updated_at=aware(row["updated_at"]) or utcnow(),
    )


def _write_txn(conn: sa.Connection, stored: StoredScheduler, **changes: Any) -> None:
    values = {
        "policy": stored.policy,
        "params": stored.params,
        "placement": stored.placement,
        "state": {**stored.state.to_dict(), "placement_turn": stored.placement_turn},
        "updated_at": utcnow(),
        **changes,
    }
    conn.execute(scheduler_state.update().where(scheduler_state.c.id == 1).values(values))


def set_policy_txn(
    conn: sa.Connection,
    policy: Any,
    params: Any = None,
    *,
    quantum_micros: Any = None,
    placement: Any = None,
) -> StoredScheduler:
    """Switch the ordering policy (exact names only) and optionally its tuning, the
    round-robin quantum and the placement strategy. The state and counters survive."""
    if not isinstance(policy, str) or policy not in POLICY_NAMES:
        raise InvalidPolicy(
            f"Invalid policy {policy!r}. Must be one of {', '.join(POLICY_NAMES)}",
            valid=list(POLICY_NAMES),
        )
    if params is not None and not isinstance(params, dict):
        raise InvalidPolicy("params must be an object of the policy's tuning parameters")
    stored = load_txn(conn, lock=True)
    merged = {**stored.params.get(policy, {}), **(params or {})}
    try:
        make_policy(policy, **merged)
    except TypeError as exc:
        raise InvalidPolicy(f"bad parameters for {policy}: {exc}", params=merged) from None
    if quantum_micros is not None:
        if isinstance(quantum_micros, bool) or not isinstance(quantum_micros, int):
            raise InvalidPolicy("quantum_micros must be a positive integer")
        if quantum_micros <= 0:
            raise InvalidPolicy("quantum_micros must be a positive integer")
        stored.state.quantum_micros = quantum_micros
    if placement is not None and placement not in STRATEGIES:
        raise InvalidPolicy(
            f"Invalid placement {placement!r}. Must be one of {', '.join(STRATEGIES)}"
        )
    stored.policy = policy
    stored.params = {**stored.params, policy: merged}
    stored.placement = placement or stored.placement
    _write_txn(conn, stored)
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
        self, kiln: Any, *, policy_refresh_s: float = 0.2, persist_every_s: float = 0.5
    ) -> None:
        self.kiln = kiln
        self.policy_refresh_s = policy_refresh_s
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._dirty = False
        self._finished_after = utcnow()
        self._inflight: dict[str, QueuedItem] = {}
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
        except (UnknownPolicy, TypeError):
            log.error("stored policy %r is unusable; keeping %s", stored.policy, self.scheduler)
        # Counters and quanta written by the API (or another controller) win over ours only
        # when we have nothing unsaved.
        if not self._dirty:
            self.scheduler.state = stored.state
        else:
            self.scheduler.state.quantum_micros = stored.state.quantum_micros

    def order(self, candidates: list[Any]) -> list[Any]:
        """Rank the locked candidates with the current policy; hold back model_type tasks
        beyond the free slots of the live instances serving them."""
        if not candidates:
            return candidates
        with self._lock:
            self._refresh_policy()
            now = time.time()
            by_id = {item_of(c).id: c for c in candidates}
            ranked = self.scheduler.order([item_of(c) for c in candidates], now)
            free: Capacity | None = None
            out = []
            for item in ranked:
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

    def sync(self, kiln: Any = None) -> None:
        """Hook: learn run times of tasks finished since the last pass (only the policies
        that use them, Fair and RoundRobin, pay for the query), and persist the state at
        most every ``persist_every_s``."""
        with self._lock:
            self._refresh_policy()
            if self.scheduler.policy_name in LEARNS_FROM_RUN_TIMES:
                self._learn_finished()
            else:
                self._inflight.clear()
                self._finished_after = utcnow()
            if not self._dirty or time.monotonic() - self._persisted_at < self.persist_every_s:
                return
            state = self.scheduler.state

            def write(conn: sa.Connection) -> None:
                stored = load_txn(conn, lock=True)
                state.quantum_micros = stored.state.quantum_micros
                stored.state = state
                _write_txn(conn, stored)

            self.kiln.txn(write)
            self._dirty = False
            self._persisted_at = time.monotonic()

    def _learn_finished(self) -> None:
        since = self._finished_after
        rows = self.kiln.read(
            lambda c: c.execute(
                sa.select(
                    tasks.c.id,
                    tasks.c.workflow_id,
                    tasks.c.priority,
                    tasks.c.ready_at,
                    tasks.c.created_at,
                    tasks.c.predicted,
                    tasks.c.started_at,
                    tasks.c.finished_at,
                    tasks.c.actual_s,
                )
                .where(tasks.c.finished_at > since, tasks.c.started_at.is_not(None))
                .order_by(tasks.c.finished_at)
                .limit(1000)
            ).all()
        )
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


# --- placement (workers) ----------------------------------------------------------------


def place_task_txn(
    conn: sa.Connection, task_id: int, attempt: int, model_type: str, instance_task_id: str
) -> Any | None:
    """Choose the instance a claimed ``model_type`` task runs on and record it on the task
    (fenced by attempt). Returns the chosen live instance, or ``None`` if none serves it."""
    now = utcnow()
    candidates = [i for i in live_instances(conn, now) if model_type in i.capabilities]
    if not candidates:
        return None
    # Serialise placements onto these instances so two workers do not both see the same
    # free slot.
    conn.execute(
        sa.select(instances.c.id)
        .where(instances.c.id.in_([i.id for i in candidates]))
        .with_for_update()
    ).all()
    row = conn.execute(
        sa.select(tasks.c.predicted).where(tasks.c.id == task_id, tasks.c.attempts == attempt)
    ).first()
    predicted = Prediction.from_dict(row.predicted) if row and row.predicted else None
    stored = load_txn(conn, lock=True)
    loads = _loads(conn, candidates)
    # A task of unknown size counts as one second: queue length and speed then decide.
    task_est = estimate(predicted) if predicted else Estimate(expected=1.0)
    inflight = inflight_by_instance(conn)
    with_room = [i for i in candidates if inflight.get(i.id, 0) < i.slots] or candidates
    chosen_id = place(
        task_est,
        [loads[i.id] for i in with_room],
        stored.placement,
        turn=stored.placement_turn,
    )
    chosen = next(i for i in candidates if str(i.id) == chosen_id)
    stored.placement_turn += 1
    _write_txn(conn, stored)
    changed = conn.execute(
        tasks.update()
        .where(
            tasks.c.id == task_id,
            tasks.c.attempts == attempt,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .values(instance_id=chosen.id, instance_task_id=instance_task_id)
        .returning(tasks.c.id)
    ).first()
    return chosen if changed else None


def _loads(conn: sa.Connection, candidates: Sequence[Any]) -> dict[int, InstanceLoad]:
    rows = conn.execute(
        sa.select(tasks.c.instance_id, tasks.c.predicted, tasks.c.started_at).where(
            tasks.c.instance_id.in_([i.id for i in candidates]),
            tasks.c.status == TaskStatus.RUNNING,
        )
    ).all()
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
    conn.execute(
        instances.update()
        .where(instances.c.id == instance_id)
        .values(speed_factor=instances.c.speed_factor + 0.2 * (ratio - instances.c.speed_factor))
    )


# --- predictions ----------------------------------------------------------------------


def annotate_predictions_txn(conn: sa.Connection, predictor: Any, *, limit: int = 500) -> int:
    """Give waiting ``model_type`` tasks the prediction they will be scheduled with
    (``predicted``, ``predicted_s``); tasks no source can predict keep NULL."""
    from kiln.app.predictor import task_metadata

    rows = conn.execute(
        sa.select(tasks.c.id, tasks.c.model_type, tasks.c.params)
        .where(
            tasks.c.status.in_([TaskStatus.PENDING, TaskStatus.READY, TaskStatus.RETRYING]),
            tasks.c.model_type.is_not(None),
            tasks.c.predicted.is_(None),
        )
        .order_by(tasks.c.id)
        .limit(limit)
    ).all()
    done = 0
    memo: dict[tuple[str, str], Prediction | None] = {}
    for r in rows:
        metadata = task_metadata(r.params)
        key = (r.model_type, repr(sorted(metadata.items())))
        if key not in memo:
            memo[key] = predictor.predict(r.model_type, metadata)
        prediction = memo[key]
        if prediction is None:
            continue
        done += conn.execute(
            tasks.update()
            .where(tasks.c.id == r.id, tasks.c.predicted.is_(None))
            .values(predicted=prediction.to_dict(), predicted_s=estimate(prediction).expected)
        ).rowcount
    return done


# --- the API's side ---------------------------------------------------------------------


def _queued_rows(conn: sa.Connection, limit: int) -> list[Any]:
    return list(conn.execute(dispatchable_tasks(tasks.c.name, tasks.c.waiting_reason).limit(limit)))


def stats(conn: sa.Connection) -> dict[str, Any]:
    """Seed 001's stats (``total_scheduled, context_switches, preemptions, active,
    active_processes, policy, quantum_micros``) plus Kiln's queue figures."""
    stored = load_txn(conn)
    counts: dict[str, int] = dict(
        conn.execute(
            sa.select(tasks.c.status, sa.func.count())
            .where(tasks.c.status.in_(ACTIVE))
            .group_by(tasks.c.status)
        ).all()
    )
    scheduler = Scheduler(stored.policy, stored.state, stored.params)
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
        }
    )
    return out


def schedule_next(conn: sa.Connection, *, limit: int = 10) -> dict[str, Any]:
    """Dry run: what would be dispatched next, in order, and why. Changes nothing."""
    stored = load_txn(conn)
    scheduler = Scheduler(stored.policy, SchedulerState.from_dict(stored.state.to_dict()))
    scheduler.params = stored.params
    scheduler.set_policy(stored.policy)
    rows = _queued_rows(conn, limit=2000)
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
        "policy": stored.policy,
        "next_task_id": queue[0]["task_id"] if queue else None,
        "next": queue[0] if queue else None,
        "queue": queue,
        "ready": len(rows),
    }
    if not queue:
        body["message"] = "No tasks ready to schedule"
    return body
