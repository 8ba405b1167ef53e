"""TaskInstances: the registry, heartbeats, lost detection and routing.

An instance registers (``POST /instances``, idempotent by ``url``), then heartbeats every
few seconds. Only instances whose last word was ``running`` and whose heartbeat is younger
than ``KILN_INSTANCE_LOST_AFTER_S`` (default 10 s) are *live* and receive tasks. A task
naming a ``model_type`` may go to a live instance that lists it among its capabilities
(an instance always serves its own model type); while none does, the task stays ready with
a ``waiting_reason`` saying so.

When an instance is lost (no heartbeat in time), deregistered, or says ``offline``, the
running attempts placed on it are recorded as ``lost`` and retried elsewhere, through the
same transition a lost worker's tasks take (``kiln.app.instances`` records them with
``kiln.store.tasks.record_outcomes_txn``); a result the instance still delivers later is
refused as stale.

This module knows the instances, their capabilities and the placement columns of ``tasks``.
"Live" and "served" are the shared expressions of ``kiln.store.clauses`` (``dispatch`` uses
them too).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kiln.core.errors import InstanceNotFound, InvalidInstanceRequest
from kiln.core.states import TaskStatus
from kiln.store.clauses import DISPATCHABLE, LIVE, live_clause, lost_after_s, served_clause
from kiln.store.db import aware, utcnow
from kiln.store.schema import instance_capabilities, instances, tasks

REPORTED_STATES = ("running", "stopped", "draining", "offline")
# Bounded so the ids fit the BIGINT task id and INTEGER attempt columns; a longer one is no
# task of Kiln's.
_KILN_TASK_ID = re.compile(r"^kiln-(\d{1,18})-(\d{1,9})$")
INT32_MAX = 2**31 - 1


def instance_task_id(task_id: int, attempt: int) -> str:
    """The id a task's attempt has on its instance; enqueueing it twice runs it once."""
    return f"kiln-{task_id}-{attempt}"


# --- validation -------------------------------------------------------------------------


def _text(body: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInstanceRequest(f"{key} must be a non-empty string", field=key)
    return value.strip()


def _count(body: dict[str, Any], key: str, default: int | None, minimum: int = 0) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT32_MAX:
        raise InvalidInstanceRequest(
            f"{key} must be an integer between {minimum} and {INT32_MAX}", field=key
        )
    return value


@dataclass(frozen=True)
class Registration:
    name: str
    url: str
    model_type: str
    hardware: str | None
    software_version: str | None
    capabilities: tuple[str, ...]
    max_concurrency: int

    @classmethod
    def parse(cls, body: Any) -> Registration:
        if not isinstance(body, dict):
            raise InvalidInstanceRequest("the request body must be a JSON object")
        url = _text(body, "url", required=True)
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise InvalidInstanceRequest("url must be an http(s) URL", field="url")
        model_type = _text(body, "model_type", required=True)
        assert model_type is not None
        caps = body.get("capabilities") or []
        if not isinstance(caps, list) or not all(isinstance(c, str) and c.strip() for c in caps):
            raise InvalidInstanceRequest(
                "capabilities must be a list of non-empty strings", field="capabilities"
            )
        return cls(
            name=_text(body, "name", required=False) or f"{model_type}@{url}",
            url=url.rstrip("/"),
            model_type=model_type,
            hardware=_text(body, "hardware", required=False),
            software_version=_text(body, "software_version", required=False),
            capabilities=tuple(dict.fromkeys(c.strip() for c in caps)),
            max_concurrency=_count(body, "max_concurrency", 1, minimum=1) or 1,
        )


# --- registry ---------------------------------------------------------------------------


def register_txn(conn: sa.Connection, reg: Registration) -> tuple[int, bool]:
    """Register an instance, or refresh the one already registered at the same url (it came
    back, e.g. after a restart of Kiln or of itself); return ``(id, created)``."""
    now = utcnow()
    values = {
        "name": reg.name,
        "model_type": reg.model_type,
        "hardware": reg.hardware,
        "software_version": reg.software_version,
        "capabilities": list(reg.capabilities),
        "max_concurrency": reg.max_concurrency,
        "slots": reg.max_concurrency,
        "status": LIVE,
        "heartbeat_at": now,
        "lost_at": None,
    }
    existing = conn.execute(
        sa.select(instances.c.id).where(instances.c.url == reg.url).with_for_update()
    ).scalar()
    if existing is not None:
        conn.execute(instances.update().where(instances.c.id == existing).values(values))
        instance_id, created = existing, False
    else:
        instance_id = conn.execute(
            instances.insert()
            .values(url=reg.url, registered_at=now, **values)
            .returning(instances.c.id)
        ).scalar_one()
        created = True
    conn.execute(
        instance_capabilities.delete().where(instance_capabilities.c.instance_id == instance_id)
    )
    serves = dict.fromkeys((reg.model_type, *reg.capabilities))
    conn.execute(
        instance_capabilities.insert(),
        [{"instance_id": instance_id, "capability": c} for c in serves],
    )
    return instance_id, created


def heartbeat_txn(conn: sa.Connection, instance_id: int, body: Any) -> dict[str, Any]:
    """Record a heartbeat: status, load, counters and the progress of Kiln's tasks on the
    instance. Raises :class:`InstanceNotFound` for an id Kiln does not know (the instance
    then registers again). Re-queueing the tasks of an ``offline`` instance is the
    caller's (``kiln.app.instances``)."""
    if not isinstance(body, dict):
        raise InvalidInstanceRequest("the request body must be a JSON object")
    status = body.get("status", LIVE)
    if status not in REPORTED_STATES:
        raise InvalidInstanceRequest(
            f"status must be one of {', '.join(REPORTED_STATES)}", field="status"
        )
    values: dict[str, Any] = {"status": status, "heartbeat_at": utcnow(), "lost_at": None}
    for key, column in (("active_tasks", "active_tasks"), ("queue_size", "queue_size")):
        count = _count(body, key, None)
        if count is not None:
            values[column] = count
    slots = _count(body, "max_concurrency", None)
    if slots is not None:
        values["slots"] = slots
    if isinstance(body.get("counters"), dict):
        values["counters"] = body["counters"]
    changed = conn.execute(
        instances.update()
        .where(instances.c.id == instance_id)
        .values(values)
        .returning(instances.c.id)
    ).first()
    if changed is None:
        raise InstanceNotFound(instance_id=instance_id)
    progressed = _store_progress_txn(conn, instance_id, body.get("tasks"))
    return {"id": instance_id, "status": status, "progress_updates": progressed}


def _store_progress_txn(conn: sa.Connection, instance_id: int, reported: Any) -> int:
    """Progress of Kiln's own tasks (ids ``kiln-<task>-<attempt>``) running on the instance,
    fenced by attempt and placement so an old attempt's report changes nothing."""
    if not isinstance(reported, list):
        return 0
    updated = 0
    for item in reported:
        if not isinstance(item, dict) or item.get("status") != "running":
            continue
        match = _KILN_TASK_ID.match(str(item.get("task_id", "")))
        fraction = item.get("progress")
        if match is None or not isinstance(fraction, int | float):
            continue
        updated += conn.execute(
            tasks.update()
            .where(
                tasks.c.id == int(match.group(1)),
                tasks.c.attempts == int(match.group(2)),
                tasks.c.status == TaskStatus.RUNNING,
                tasks.c.instance_id == instance_id,
            )
            .values(
                progress=max(0.0, min(1.0, float(fraction))),
                progress_message=str(item.get("message") or "")[:500] or None,
            )
        ).rowcount
    return updated


def lock_instance_txn(conn: sa.Connection, instance_id: int) -> None:
    """Lock the instance's row; :class:`InstanceNotFound` when there is none."""
    exists = conn.execute(
        sa.select(instances.c.id).where(instances.c.id == instance_id).with_for_update()
    ).scalar()
    if exists is None:
        raise InstanceNotFound(instance_id=instance_id)


def delete_instance_txn(conn: sa.Connection, instance_id: int) -> None:
    conn.execute(instances.delete().where(instances.c.id == instance_id))


def running_on_txn(conn: sa.Connection, instance_id: int) -> list[Any]:
    """The running attempts placed on ``instance_id``, locked (those another transaction
    holds are skipped): ``id, attempts, workflow_id, name, max_attempts, started_at``."""
    return list(
        conn.execute(
            sa.select(
                tasks.c.id,
                tasks.c.attempts,
                tasks.c.workflow_id,
                tasks.c.name,
                tasks.c.max_attempts,
                tasks.c.started_at,
            )
            .where(tasks.c.instance_id == instance_id, tasks.c.status == TaskStatus.RUNNING)
            .with_for_update(skip_locked=True)
        ).all()
    )


def mark_lost_txn(conn: sa.Connection, now: dt.datetime) -> list[int]:
    """Mark instances silent for longer than :func:`lost_after_s` as ``lost``; return their
    ids in order."""
    cutoff = now - dt.timedelta(seconds=lost_after_s())
    lost = conn.execute(
        instances.update()
        .where(instances.c.status != "lost", instances.c.heartbeat_at < cutoff)
        .values(status="lost", lost_at=now)
        .returning(instances.c.id)
    ).scalars()
    return sorted(lost)


def lost_with_running_tasks(conn: sa.Connection) -> list[int]:
    """Lost instances that still have running attempts placed on them (e.g. claimed in the
    moment they went silent), in order."""
    stray = conn.execute(
        sa.select(instances.c.id)
        .where(instances.c.status == "lost")
        .where(
            sa.exists().where(
                tasks.c.instance_id == instances.c.id, tasks.c.status == TaskStatus.RUNNING
            )
        )
    ).scalars()
    return sorted(stray)


def mark_unreachable_txn(conn: sa.Connection, instance_id: int) -> bool:
    """A worker could not connect to the instance: stop routing to it now rather than after
    the heartbeat timeout. Its next heartbeat, if it is alive after all, makes it live
    again."""
    return (
        conn.execute(
            instances.update()
            .where(instances.c.id == instance_id, instances.c.status == LIVE)
            .values(status="lost", lost_at=utcnow())
        ).rowcount
        == 1
    )


# --- routing ----------------------------------------------------------------------------


def note_unroutable_txn(conn: sa.Connection, now: dt.datetime) -> int:
    """Say why ready tasks whose model type no live instance serves are not dispatched."""
    reason = sa.literal("no live instance serves model_type ", sa.Text) + tasks.c.model_type
    return conn.execute(
        tasks.update()
        .where(
            tasks.c.status.in_(DISPATCHABLE),
            tasks.c.model_type.is_not(None),
            ~served_clause(tasks.c.model_type, now),
            tasks.c.waiting_reason.is_distinct_from(reason),
        )
        .values(waiting_reason=reason)
    ).rowcount


@dataclass(frozen=True)
class LiveInstance:
    id: int
    name: str
    url: str
    model_type: str
    hardware: str | None
    slots: int
    speed_factor: float
    capabilities: frozenset[str]


def live_instances(conn: sa.Connection, now: dt.datetime | None = None) -> list[LiveInstance]:
    now = now or utcnow()
    rows = conn.execute(
        sa.select(
            instances.c.id,
            instances.c.name,
            instances.c.url,
            instances.c.model_type,
            instances.c.hardware,
            instances.c.slots,
            instances.c.speed_factor,
            instance_capabilities.c.capability,
        )
        .join(instance_capabilities, instance_capabilities.c.instance_id == instances.c.id)
        .where(live_clause(now))
        .order_by(instances.c.id)
    ).all()
    by_id: dict[int, dict[str, Any]] = {}
    for r in rows:
        entry = by_id.setdefault(r.id, {**r._asdict(), "capabilities": set()})
        entry["capabilities"].add(r.capability)
    return [
        LiveInstance(
            id=e["id"],
            name=e["name"],
            url=e["url"],
            model_type=e["model_type"],
            hardware=e["hardware"],
            slots=e["slots"],
            speed_factor=e["speed_factor"],
            capabilities=frozenset(e["capabilities"]),
        )
        for e in by_id.values()
    ]


def inflight_by_instance(conn: sa.Connection) -> dict[int, int]:
    rows = conn.execute(
        sa.select(tasks.c.instance_id, sa.func.count())
        .where(tasks.c.status == TaskStatus.RUNNING, tasks.c.instance_id.is_not(None))
        .group_by(tasks.c.instance_id)
    ).all()
    return {r[0]: r[1] for r in rows}


@dataclass
class Capacity:
    """Free slots per live instance, and which instances serve each model type. An instance
    serving several model types has one pool of slots for all of them."""

    room: dict[int, int]
    serving: dict[str, list[int]]

    def take(self, model_type: str) -> bool:
        """Reserve a slot for one task of ``model_type`` on the roomiest instance serving it."""
        ids = [i for i in self.serving.get(model_type, ()) if self.room[i] > 0]
        if not ids:
            return False
        best = max(ids, key=lambda i: (self.room[i], -i))
        self.room[best] -= 1
        return True

    def per_model_type(self) -> dict[str, int]:
        return {cap: sum(self.room[i] for i in ids) for cap, ids in self.serving.items()}


def capacity(conn: sa.Connection, now: dt.datetime | None = None) -> Capacity:
    """Slots Kiln may still fill now: each live instance's slots less Kiln's tasks running
    there, less one per task sent to a worker but not placed yet (queued, or claimed a moment
    ago) of a model type it serves."""
    live = live_instances(conn, now)
    inflight = inflight_by_instance(conn)
    cap = Capacity(
        room={i.id: max(i.slots - inflight.get(i.id, 0), 0) for i in live},
        serving={},
    )
    for inst in live:
        for name in sorted(inst.capabilities):
            cap.serving.setdefault(name, []).append(inst.id)
    unplaced = sa.or_(
        tasks.c.status == TaskStatus.QUEUED,
        sa.and_(tasks.c.status == TaskStatus.RUNNING, tasks.c.instance_id.is_(None)),
    )
    for model_type, count in conn.execute(
        sa.select(tasks.c.model_type, sa.func.count())
        .where(unplaced, tasks.c.model_type.is_not(None))
        .group_by(tasks.c.model_type)
    ).all():
        for _ in range(count):
            cap.take(model_type)
    return cap


def free_slots(conn: sa.Connection, now: dt.datetime | None = None) -> dict[str, int]:
    """Per model type served by a live instance: how many more of its tasks may be sent now
    (see :func:`capacity`; instances serving several model types count in each)."""
    return capacity(conn, now).per_model_type()


def note_busy_txn(conn: sa.Connection, free: dict[str, int]) -> None:
    """Say which ready tasks wait for a slot, and clear the reason of those that no longer do."""
    busy = sorted(cap for cap, n in free.items() if n <= 0)
    idle = sorted(cap for cap, n in free.items() if n > 0)
    base = [tasks.c.status.in_(DISPATCHABLE), tasks.c.model_type.is_not(None)]
    if busy:
        reason = (
            sa.literal("every live instance serving model_type ", sa.Text)
            + tasks.c.model_type
            + sa.literal(" is busy; waiting for a free slot", sa.Text)
        )
        conn.execute(
            tasks.update()
            .where(*base, tasks.c.model_type.in_(busy))
            .where(tasks.c.waiting_reason.is_distinct_from(reason))
            .values(waiting_reason=reason)
        )
    if idle:
        # A free slot goes to one waiting task at the next dispatch, which clears that task's
        # reason (mark_queued); the rest still wait for a slot. Clearing them all while one
        # slot was free, then writing them back once it was taken, rewrote the whole backlog
        # twice per finished task (10,000 dead row versions a minute behind one instance).
        noted = base + [tasks.c.model_type.in_(idle), tasks.c.waiting_reason.is_not(None)]
        waiting = conn.execute(
            sa.select(tasks.c.model_type, sa.func.count())
            .where(*noted)
            .group_by(tasks.c.model_type)
        ).all()
        clear = sorted(cap for cap, n in waiting if n <= free[cap])
        if clear:
            conn.execute(
                tasks.update()
                .where(*noted, tasks.c.model_type.in_(clear))
                .values(waiting_reason=None)
            )


# --- tasks placed on instances ---------------------------------------------------------


def lock_instances_txn(conn: sa.Connection, instance_ids: list[int]) -> None:
    """Lock these instances' rows: placements onto them then run one at a time, so two
    workers do not both see the same free slot."""
    conn.execute(
        sa.select(instances.c.id).where(instances.c.id.in_(instance_ids)).with_for_update()
    ).all()


def task_prediction(conn: sa.Connection, task_id: int, attempt: int) -> dict[str, Any] | None:
    """The prediction stored on this attempt's task, if any."""
    row = conn.execute(
        sa.select(tasks.c.predicted).where(tasks.c.id == task_id, tasks.c.attempts == attempt)
    ).first()
    return row.predicted if row and row.predicted else None


def running_predictions(conn: sa.Connection, instance_ids: list[int]) -> list[Any]:
    """``instance_id, predicted, started_at`` of the running tasks placed on these instances."""
    return list(
        conn.execute(
            sa.select(tasks.c.instance_id, tasks.c.predicted, tasks.c.started_at).where(
                tasks.c.instance_id.in_(instance_ids),
                tasks.c.status == TaskStatus.RUNNING,
            )
        ).all()
    )


def assign_instance_txn(
    conn: sa.Connection, task_id: int, attempt: int, instance_id: int, instance_task_id: str
) -> bool:
    """Record where a running attempt runs; ``False`` when the attempt no longer runs."""
    changed = conn.execute(
        tasks.update()
        .where(
            tasks.c.id == task_id,
            tasks.c.attempts == attempt,
            tasks.c.status == TaskStatus.RUNNING,
        )
        .values(instance_id=instance_id, instance_task_id=instance_task_id)
        .returning(tasks.c.id)
    ).first()
    return changed is not None


def attempt_is_running(conn: sa.Connection, task_id: int, attempt: int) -> bool:
    """The attempt still owns its task (it is running and was not re-leased)."""
    return (
        conn.execute(
            sa.select(tasks.c.id).where(
                tasks.c.id == task_id,
                tasks.c.attempts == attempt,
                tasks.c.status == TaskStatus.RUNNING,
            )
        ).first()
        is not None
    )


def nudge_speed_factor_txn(conn: sa.Connection, instance_id: int, ratio: float) -> None:
    """Move the instance's speed factor a fifth of the way towards ``ratio``."""
    conn.execute(
        instances.update()
        .where(instances.c.id == instance_id)
        .values(speed_factor=instances.c.speed_factor + 0.2 * (ratio - instances.c.speed_factor))
    )


# --- reading ----------------------------------------------------------------------------


def list_instances(conn: sa.Connection, only: int | None = None) -> list[dict[str, Any]]:
    """Every registered instance (or only the one with id ``only``) with its load and
    whether it is live."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=lost_after_s())
    inflight = inflight_by_instance(conn)
    query = sa.select(instances).order_by(instances.c.id)
    if only is not None:
        query = query.where(instances.c.id == only)
    out = []
    for r in conn.execute(query).mappings():
        heartbeat_at = aware(r["heartbeat_at"])
        out.append(
            {
                "id": r["id"],
                "name": r["name"],
                "url": r["url"],
                "model_type": r["model_type"],
                "hardware": r["hardware"],
                "software_version": r["software_version"],
                "capabilities": r["capabilities"],
                "max_concurrency": r["max_concurrency"],
                "slots": r["slots"],
                "status": r["status"],
                "live": r["status"] == LIVE and heartbeat_at is not None and heartbeat_at >= cutoff,
                "active_tasks": r["active_tasks"],
                "queue_size": r["queue_size"],
                "counters": r["counters"] or {},
                "kiln_tasks_running": inflight.get(r["id"], 0),
                "speed_factor": r["speed_factor"],
                "registered_at": _iso(r["registered_at"]),
                "heartbeat_at": _iso(r["heartbeat_at"]),
                "lost_at": _iso(r["lost_at"]),
            }
        )
    return out


def _iso(value: dt.datetime | None) -> str | None:
    value = aware(value)
    return value.isoformat() if value is not None else None
