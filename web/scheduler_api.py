"""The scheduler's endpoints, compatible with seed 001's kernel scheduler.

* ``GET /scheduler/stats`` → ``{success, total_scheduled, context_switches, preemptions,
  active, active_processes, policy, quantum_micros, placement, ready, queued, running, ...}``.
* ``PUT /scheduler/policy`` ``{"policy": "FIFO" | "RoundRobin" | "Priority" | "Fair" |
  "ShortestPredicted", "params"?: {...}, "quantum_micros"?: int, "placement"?: str}`` → 200
  ``{success, policy, previous_policy, message}``; exact names only, 400
  ``invalid_policy`` otherwise. The controller re-orders everything queued on its next pass.
* ``POST /scheduler/schedule-next[?limit=N]`` → dry run: ``{success, policy, next_task_id,
  next, queue: [{position, task_id, name, workflow_id, priority, model_type, predicted_s,
  waiting_reason, reason}], ready}``; nothing changes.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import jsonify
from flask_smorest import Blueprint

from kiln.web.auth import SECURITY
from kiln.web.common import kiln
from kiln.web.schemas_scheduling import (
    PolicyChangedSchema,
    PolicyRequestSchema,
    ScheduleNextQuerySchema,
    ScheduleNextSchema,
    SchedulerStatsSchema,
)

blp = Blueprint("scheduler", __name__, description="Scheduling policies (seed 001).")

# The views answer with the engine's dicts as they are (the schemas document them).


@blp.get("/scheduler/stats")
@blp.response(200, SchedulerStatsSchema)
def stats():  # type: ignore[no-untyped-def]
    """Seed 001's counters plus Kiln's queue figures."""
    return jsonify({"success": True, **kiln().scheduler.stats()})


@blp.put("/scheduler/policy")
@blp.arguments(PolicyRequestSchema())
@blp.response(200, PolicyChangedSchema)
@blp.doc(security=SECURITY)
def set_policy(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Switch the ordering policy (exact names; 400 ``invalid_policy`` otherwise), its
    tuning, the round-robin quantum or the placement; the controller re-orders what is
    queued on its next pass."""
    change = kiln().scheduler.set_policy(
        data.get("policy"),
        data.get("params"),
        quantum_micros=data.get("quantum_micros"),
        placement=data.get("placement"),
    )
    stored = change.current
    return jsonify(
        {
            "success": True,
            "policy": stored.policy,
            "previous_policy": change.previous,
            "placement": stored.placement,
            "quantum_micros": stored.state.quantum_micros,
            "message": "Scheduling policy updated successfully",
        }
    )


@blp.post("/scheduler/schedule-next")
@blp.arguments(ScheduleNextQuerySchema(), location="query", unknown=ma.RAISE)
@blp.response(200, ScheduleNextSchema)
@blp.doc(security=SECURITY)
def schedule_next(query: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Dry run: what would be dispatched next, in order, and why; nothing changes."""
    return jsonify(kiln().scheduler.schedule_next(limit=query["limit"]))
