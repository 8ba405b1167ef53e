"""``kiln.instances``: the TaskInstance registry (register, heartbeat, list, deregister), the
controller's checks (lost instances, tasks no instance serves or all are busy for), and the
steps a worker takes to run a ``model_type`` task on an instance.

The attempts of an instance that is lost, deregistered or says ``offline`` are recorded as
``lost`` here, through the same transition a lost worker's tasks take
(``kiln.store.tasks.record_outcomes_txn``): the store's instance module only finds them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from kiln.app.database import Database
from kiln.app.predictor import record_observation_txn
from kiln.app.scheduler import learn_speed_txn, place_task_txn
from kiln.core.errors import InstanceNotFound, InvalidInstanceRequest
from kiln.core.execution import ClaimedTask, Outcome
from kiln.store import instances as store
from kiln.store import predictions
from kiln.store.db import aware, utcnow
from kiln.store.instances import (
    REPORTED_STATES,
    LiveInstance,
    Registration,
    instance_task_id,
    lost_after_s,
)
from kiln.store.tasks import record_outcomes_txn

__all__ = [
    "REPORTED_STATES",
    "InstanceNotFound",
    "InstancesAPI",
    "InvalidInstanceRequest",
    "LiveInstance",
    "Registration",
    "instance_task_id",
    "lost_after_s",
    "requeue_inflight_txn",
]


def requeue_inflight_txn(
    conn: sa.Connection, instance_id: int, why: str, *, retry_base_s: float, retry_max_s: float
) -> list[int]:
    """Record the running attempts placed on ``instance_id`` as lost (they retry, or fail
    once their attempts are used up); return the task ids."""
    rows = store.running_on_txn(conn, instance_id)
    if not rows:
        return []
    now = utcnow()
    outcomes = [
        Outcome(
            ClaimedTask(
                id=r.id,
                attempt=r.attempts,
                workflow_id=r.workflow_id,
                name=r.name,
                handler=None,
                model_type=None,
                params=None,
                timeout_s=None,
                max_attempts=r.max_attempts,
            ),
            ok=False,
            started_at=aware(r.started_at) or now,
            finished_at=now,
            error=f"{why} during attempt {r.attempts} of {r.max_attempts}",
            kind="lost",
        )
        for r in rows
    ]
    report = record_outcomes_txn(conn, outcomes, retry_base_s=retry_base_s, retry_max_s=retry_max_s)
    return sorted(report.applied)


def detect_lost_txn(
    conn: sa.Connection, *, retry_base_s: float, retry_max_s: float, now: dt.datetime | None = None
) -> dict[int, list[int]]:
    """Mark instances silent for longer than :func:`lost_after_s` as ``lost`` and re-queue
    their running tasks; return ``{instance id: [re-queued task ids]}``."""
    now = now or utcnow()
    retry = {"retry_base_s": retry_base_s, "retry_max_s": retry_max_s}
    out: dict[int, list[int]] = {}
    for instance_id in store.mark_lost_txn(conn, now):
        why = f"instance {instance_id} lost (no heartbeat for {lost_after_s():g}s)"
        out[instance_id] = requeue_inflight_txn(conn, instance_id, why, **retry)
    # Running attempts placed on an instance that is already lost (e.g. claimed in the
    # moment it went silent) are re-queued too.
    for instance_id in store.lost_with_running_tasks(conn):
        out.setdefault(instance_id, []).extend(
            requeue_inflight_txn(conn, instance_id, f"instance {instance_id} lost", **retry)
        )
    return out


class InstancesAPI:
    """``kiln.instances``. Each method is one transaction."""

    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln

    def _retry(self) -> dict[str, float]:
        s = self._kiln.settings
        return {"retry_base_s": s.retry_base_s, "retry_max_s": s.retry_max_s}

    @staticmethod
    def lost_after_s() -> float:
        """Seconds without a heartbeat after which an instance is lost."""
        return lost_after_s()

    # --- the registry -------------------------------------------------------------------

    def register(self, body: Any) -> dict[str, Any]:
        """Register an instance, or refresh the one registered at the same url (it came
        back): ``{"id", "created", "instance"}``. :class:`InvalidInstanceRequest` for an
        invalid body."""
        reg = Registration.parse(body)

        def register(conn: sa.Connection) -> dict[str, Any]:
            instance_id, created = store.register_txn(conn, reg)
            listed = store.list_instances(conn, only=instance_id)
            return {"id": instance_id, "created": created, "instance": listed[0]}

        return self._kiln.txn(register)

    def heartbeat(self, instance_id: int, body: Any) -> dict[str, Any]:
        """Record status, load, counters and task progress: ``{"id", "status",
        "progress_updates", "requeued"}``. ``offline`` re-queues the tasks placed on the
        instance; :class:`InstanceNotFound` for an unknown id (it registers again)."""

        def beat(conn: sa.Connection) -> dict[str, Any]:
            answer = store.heartbeat_txn(conn, instance_id, body)
            requeued: list[int] = []
            if answer["status"] == "offline":
                why = f"instance {instance_id} went offline"
                requeued = requeue_inflight_txn(conn, instance_id, why, **self._retry())
            return {**answer, "requeued": requeued}

        return self._kiln.txn(beat)

    def deregister(self, instance_id: int) -> list[int]:
        """Forget an instance; its running tasks are retried elsewhere. Returns their ids;
        :class:`InstanceNotFound` for an unknown id."""

        def forget(conn: sa.Connection) -> list[int]:
            store.lock_instance_txn(conn, instance_id)
            why = f"instance {instance_id} was deregistered"
            requeued = requeue_inflight_txn(conn, instance_id, why, **self._retry())
            store.delete_instance_txn(conn, instance_id)
            return requeued

        return self._kiln.txn(forget)

    def all(self) -> list[dict[str, Any]]:
        """Every registered instance with its load and whether it is live."""
        return self._kiln.read(store.list_instances)

    def get(self, instance_id: int) -> dict[str, Any]:
        """One instance as :meth:`all` lists it; :class:`InstanceNotFound` if unknown."""
        listed = self._kiln.read(lambda c: store.list_instances(c, only=instance_id))
        if not listed:
            raise InstanceNotFound(instance_id=instance_id)
        return listed[0]

    def live(self) -> list[LiveInstance]:
        """The instances that receive tasks now."""
        return self._kiln.read(store.live_instances)

    def free_slots(self) -> dict[str, int]:
        """Per model type served by a live instance: how many more of its tasks may be
        sent now."""
        return self._kiln.read(store.free_slots)

    # --- the controller's checks --------------------------------------------------------

    def detect_lost(self, now: dt.datetime | None = None) -> dict[int, list[int]]:
        """Instances silent past :meth:`lost_after_s` become ``lost`` and their running
        tasks are retried elsewhere: ``{instance id: [re-queued task ids]}``."""
        return self._kiln.txn(lambda c: detect_lost_txn(c, now=now, **self._retry()))

    def note_unroutable(self) -> int:
        """Ready tasks no live instance serves say so in ``waiting_reason``."""
        return self._kiln.txn(lambda c: store.note_unroutable_txn(c, utcnow()))

    def note_busy(self) -> None:
        """Ready tasks say when every instance serving them is busy (and stop saying so
        when one has room)."""
        free = self.free_slots()
        if free:
            self._kiln.txn(lambda c: store.note_busy_txn(c, free))

    # --- running a task on an instance (workers) ---------------------------------------

    def place(self, task: ClaimedTask) -> LiveInstance | None:
        """Place a claimed ``model_type`` attempt on a live instance serving it, under the
        id :func:`instance_task_id`; ``None`` when none serves it."""
        assert task.model_type is not None
        model_type, remote_id = task.model_type, instance_task_id(task.id, task.attempt)
        return self._kiln.txn(
            lambda c: place_task_txn(c, task.id, task.attempt, model_type, remote_id)
        )

    def still_owned(self, task: ClaimedTask) -> bool:
        """The attempt still owns its task (it was not re-leased, finished or cancelled)."""
        return self._kiln.read(lambda c: store.attempt_is_running(c, task.id, task.attempt))

    def mark_unreachable(self, instance_id: int) -> bool:
        """Stop routing to an instance a worker could not connect to (until it heartbeats
        again); ``False`` if it was not live."""
        return self._kiln.txn(lambda c: store.mark_unreachable_txn(c, instance_id))

    def record_duration(
        self,
        task: ClaimedTask,
        instance: LiveInstance,
        metadata: Mapping[str, Any],
        actual_s: float,
        *,
        succeeded: bool,
    ) -> None:
        """Store the measured time on the task; a success also teaches the predictor and
        the instance's speed factor."""

        def write(conn: sa.Connection) -> None:
            found, predicted = predictions.record_actual_txn(conn, task.id, task.attempt, actual_s)
            if not found or not succeeded:
                return
            record_observation_txn(
                conn,
                model_type=task.model_type or "",
                hardware=instance.hardware,
                metadata=metadata,
                duration_s=actual_s,
                task_id=task.id,
                instance_id=instance.id,
            )
            learn_speed_txn(conn, instance.id, predicted, actual_s)

        self._kiln.txn(write)
