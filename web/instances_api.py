"""``/instances``: the TaskInstance registry (the contract in
``workers/taskinstance/server.py``'s docstring).

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

from flask import Blueprint, current_app, jsonify, request

from engine import instances as registry
from web.errors import BadRequest

blp = Blueprint("instances", __name__)


def _kiln() -> Any:
    return current_app.extensions["kiln"]


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


@blp.post("/instances")
def register():  # type: ignore[no-untyped-def]
    reg = registry.Registration.parse(_body())
    kiln = _kiln()
    instance_id, created = kiln.txn(lambda c: registry.register_txn(c, reg))
    listed = kiln.read(registry.list_instances)
    instance = next((i for i in listed if i["id"] == instance_id), None)
    return jsonify({"id": instance_id, "created": created, "instance": instance}), (
        201 if created else 200
    )


@blp.post("/instances/<int:instance_id>/heartbeat")
def heartbeat(instance_id: int):  # type: ignore[no-untyped-def]
    body = _body()
    kiln = _kiln()
    s = kiln.settings
    return jsonify(
        kiln.txn(
            lambda c: registry.heartbeat_txn(
                c, instance_id, body, retry_base_s=s.retry_base_s, retry_max_s=s.retry_max_s
            )
        )
    )


@blp.delete("/instances/<int:instance_id>")
def deregister(instance_id: int):  # type: ignore[no-untyped-def]
    kiln = _kiln()
    s = kiln.settings
    requeued = kiln.txn(
        lambda c: registry.deregister_txn(
            c, instance_id, retry_base_s=s.retry_base_s, retry_max_s=s.retry_max_s
        )
    )
    return jsonify({"id": instance_id, "deleted": True, "requeued": requeued})


@blp.get("/instances")
def list_instances():  # type: ignore[no-untyped-def]
    items = _kiln().read(registry.list_instances)
    return jsonify({"instances": items, "count": len(items)})


blueprints = [blp]
