"""``/instances``: the TaskInstance registry (the contract in
``kiln.taskinstance.server``'s docstring).

* ``POST /instances`` ``{name, url, model_type, hardware, software_version, capabilities,
  max_concurrency}`` → 201 ``{"id", "created": true, "instance"}`` for a new instance, 200
  with ``created: false`` when the url is already registered (the same instance coming
  back); 422 for an invalid body.
* ``POST /instances/<id>/heartbeat`` ``{status, active_tasks, queue_size, max_concurrency,
  counters, tasks}`` → 200; 404 for an unknown id (the instance then registers again).
* ``DELETE /instances/<id>`` → 200 ``{"id", "deleted": true, "requeued": [task ids]}``; 404.
* ``GET /instances`` → ``{"instances": [...], "count"}``.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask_smorest import Blueprint

from kiln.core.redaction import redact
from kiln.web.auth import SECURITY
from kiln.web.common import kiln
from kiln.web.schemas_scheduling import (
    DeregisteredSchema,
    HeartbeatAnswerSchema,
    HeartbeatSchema,
    InstanceListSchema,
    RegisteredSchema,
    RegistrationSchema,
)

blp = Blueprint("instances", __name__, description="The TaskInstance registry.")
ID = "int(max=9223372036854775807)"

# The views answer with the engine's dicts as they are (the schemas document them), with
# secrets (credentials in an instance's url) as ***.


@blp.post("/instances")
@blp.arguments(RegistrationSchema())
@blp.response(201, RegisteredSchema)
@blp.alt_response(200, schema=RegisteredSchema, description="the url was registered before")
@blp.doc(security=SECURITY)
def register(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    """Register an instance: 201 when new, 200 when its url is known (it came back)."""
    answer = redact(kiln().instances.register(data))
    return jsonify(answer), (201 if answer["created"] else 200)


@blp.post(f"/instances/<{ID}:instance_id>/heartbeat")
@blp.arguments(HeartbeatSchema())
@blp.response(200, HeartbeatAnswerSchema)
@blp.doc(security=SECURITY)
def heartbeat(data: dict[str, Any], instance_id: int):  # type: ignore[no-untyped-def]
    """Status, load, counters and task progress; 404 when the id is unknown (register
    again). ``offline`` re-queues the tasks still placed on the instance."""
    return jsonify(kiln().instances.heartbeat(instance_id, data))


@blp.delete(f"/instances/<{ID}:instance_id>")
@blp.response(200, DeregisteredSchema)
@blp.doc(security=SECURITY)
def deregister(instance_id: int):  # type: ignore[no-untyped-def]
    """Forget an instance; the tasks running on it are retried elsewhere."""
    requeued = kiln().instances.deregister(instance_id)
    return jsonify({"id": instance_id, "deleted": True, "requeued": requeued})


@blp.get("/instances")
@blp.response(200, InstanceListSchema)
def list_instances():  # type: ignore[no-untyped-def]
    """Every registered instance with its load and whether it is live."""
    items = redact(kiln().instances.all())
    return jsonify({"instances": items, "count": len(items)})
