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

from flask import Blueprint, current_app, jsonify, request

from engine import scheduler_service as service
from web.errors import BadRequest

blp = Blueprint("scheduler", __name__)


def _kiln() -> Any:
    return current_app.extensions["kiln"]


@blp.get("/scheduler/stats")
def stats():  # type: ignore[no-untyped-def]
    return jsonify({"success": True, **_kiln().read(service.stats)})


@blp.put("/scheduler/policy")
def set_policy():  # type: ignore[no-untyped-def]
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    kiln = _kiln()
    previous = kiln.read(service.load_txn).policy
    stored = kiln.txn(
        lambda c: service.set_policy_txn(
            c,
            data.get("policy"),
            data.get("params"),
            quantum_micros=data.get("quantum_micros"),
            placement=data.get("placement"),
        )
    )
    return jsonify(
        {
            "success": True,
            "policy": stored.policy,
            "previous_policy": previous,
            "placement": stored.placement,
            "quantum_micros": stored.state.quantum_micros,
            "message": "Scheduling policy updated successfully",
        }
    )


@blp.post("/scheduler/schedule-next")
def schedule_next():  # type: ignore[no-untyped-def]
    raw = request.args.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadRequest("limit must be an integer between 1 and 1000", field="limit")
    return jsonify(_kiln().read(lambda c: service.schedule_next(c, limit=int(raw))))


blueprints = [blp]
