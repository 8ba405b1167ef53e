"""``kiln.schedules``: cron schedules (create, read, change, pause, delete) and firing the due
ones, which every controller does each pass (:meth:`Schedules.fire_due`). The rules are pure
(:mod:`kiln.core.schedules`); the SQL is in :mod:`kiln.store.schedules`."""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from typing import Any, Protocol

from kiln.app import tracing
from kiln.app.database import Database
from kiln.core.clock import utcnow
from kiln.core.definitions import WorkflowSpec
from kiln.core.errors import KilnError
from kiln.core.schedules import fire_times_after, parse_schedule
from kiln.store import schedules as sched

log = logging.getLogger("kiln.schedules")
NEXT_FIRES_SHOWN = 5


class Specs(Database, Protocol):
    def spec_of(self, definition: dict[str, Any]) -> WorkflowSpec: ...


class Schedules:
    def __init__(self, kiln: Specs) -> None:
        self._kiln = kiln
        self._broken: set[tuple[int, Any]] = set()  # (schedule, cursor) whose fire failed

    def create(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check and store a schedule; InvalidSchedule / InvalidDefinition (422) when it or
        its workflow is invalid, ScheduleNameTaken (409) when the name is in use."""
        spec = parse_schedule(data)
        self._kiln.spec_of(spec.workflow)
        return self._with_next(self._kiln.txn(lambda c: sched.create_schedule_txn(c, spec)))

    def get(self, schedule_id: int, *, fires: int = 20) -> dict[str, Any]:
        """The schedule with its next fire times and its latest ``fires``."""
        row = self._kiln.read(lambda c: sched.get_schedule(c, schedule_id))
        row["fires"] = self._kiln.read(lambda c: sched.fires_of(c, schedule_id, fires))
        return self._with_next(row)

    def list(self) -> list[dict[str, Any]]:
        return [self._with_next(r) for r in self._kiln.read(sched.list_schedules)]

    def update(self, schedule_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (any fields of a schedule); checked as a whole afterwards."""
        current = self._kiln.read(lambda c: sched.get_schedule(c, schedule_id))
        spec = parse_schedule(changes, partial_of=sched.spec_of(current))
        if "workflow" in changes:
            self._kiln.spec_of(spec.workflow)
        return self._with_next(
            self._kiln.txn(lambda c: sched.update_schedule_txn(c, schedule_id, spec))
        )

    def delete(self, schedule_id: int) -> None:
        self._kiln.txn(lambda c: sched.delete_schedule_txn(c, schedule_id))

    def pause(self, schedule_id: int) -> dict[str, Any]:
        return self._with_next(self._kiln.txn(lambda c: sched.set_paused_txn(c, schedule_id, True)))

    def resume(self, schedule_id: int) -> dict[str, Any]:
        return self._with_next(
            self._kiln.txn(lambda c: sched.set_paused_txn(c, schedule_id, False))
        )

    def fire_due(self, now: dt.datetime | None = None) -> int:
        """Fire every due schedule, one transaction each; return how many runs started. Safe
        with any number of controllers at once: each fire time starts at most one run."""
        now = now or utcnow()
        started = 0
        for schedule_id in self._kiln.read(lambda c: sched.due_schedule_ids(c, now)):
            try:
                with tracing.span("kiln.schedule.fire", schedule=schedule_id) as traced:
                    fired = self._kiln.txn(
                        partial(
                            sched.fire_schedule_txn,
                            schedule_id=schedule_id,
                            now=now,
                            workflow_of=self._kiln.spec_of,
                            trace_context=traced.traceparent,
                        )
                    )
                    if fired is not None:
                        traced.set(runs=[wf_id for _, wf_id in fired.started])
            except KilnError as exc:  # its workflow no longer validates: say so once
                key = (schedule_id, str(exc))
                if key not in self._broken:
                    self._broken.add(key)
                    log.error("schedule %d cannot fire: %s", schedule_id, exc.message)
                continue
            if fired is None:
                continue
            started += len(fired.started)
            if fired.missed:
                log.warning(
                    "schedule %d: %d fire times missed while no controller ran (catch_up)",
                    schedule_id,
                    fired.missed,
                )
        return started

    def _with_next(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with ``next_fire_times``: the next ones from its cursor (none if paused)."""
        nxt, shown = row["next_fire_at"], NEXT_FIRES_SHOWN - 1
        later = fire_times_after(row["cron"], row["timezone"], nxt, count=shown)
        row["next_fire_times"] = [] if row["paused"] else [nxt, *later]
        return row
