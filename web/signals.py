"""Signals over HTTP: ``POST /workflows/<id>/signals/<name>`` sends one to a run (kept until a
task of the run waiting for it takes it; ``Idempotency-Key`` makes a resend the same signal),
``GET /workflows/<id>/signals`` lists them with who took each."""

from __future__ import annotations

from flask import request
from flask_smorest import Blueprint
from marshmallow import fields

from kiln.web.common import MUTATING_DOC, kiln
from kiln.web.errors import BadRequest
from kiln.web.schemas import ma
from kiln.web.workflows import ID

blp = Blueprint("signals", __name__, description="Signals to runs (human-in-the-loop).")


class SignalSchema(ma.Schema):
    id = fields.Integer()
    workflow_id = fields.Integer()
    name = fields.String()
    key = fields.String()
    payload = fields.Raw(allow_none=True)
    created_at = fields.DateTime(allow_none=True)
    taken_by = fields.Integer(
        allow_none=True, metadata={"description": "the task that received it (null: kept)"}
    )
    taken_at = fields.DateTime(allow_none=True)


class SignalSentSchema(ma.Schema):
    id = fields.Integer()
    workflow_id = fields.Integer()
    name = fields.String()
    key = fields.String()
    duplicate = fields.Boolean(
        metadata={"description": "true: this Idempotency-Key sent it before; nothing new kept"}
    )
    woke = fields.Integer(metadata={"description": "tasks it woke (0: kept for later)"})
    taken_by = fields.Integer(allow_none=True)


class SignalListSchema(ma.Schema):
    signals = fields.List(fields.Nested(SignalSchema))


NAME_PARAMETER = {
    "in": "path",
    "name": "name",
    "required": True,
    "description": "the signal's name",
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
}


@blp.post(f"/workflows/<{ID}:workflow_id>/signals/<string:name>")
@blp.response(201, SignalSentSchema)
@blp.alt_response(200, schema=SignalSentSchema, description="replayed: same Idempotency-Key")
@blp.doc(**{**MUTATING_DOC, "parameters": [*MUTATING_DOC["parameters"], NAME_PARAMETER]})
def send(workflow_id: int, name: str):  # type: ignore[no-untyped-def]
    """Send signal ``name`` to a run; the JSON body is its payload (what the waiting task's
    result is: ``{{Approve.result.approved}}``). A signal sent before its task is reached is
    kept and delivered then. 404 for an unknown run, 409 for a finished one."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key.strip()) <= 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", field="Idempotency-Key")
    payload = None
    if request.content_length:
        payload = request.get_json(silent=True, cache=False)
        if payload is None and request.get_data(cache=True).strip() != b"null":
            raise BadRequest("the body is not valid JSON (the signal's payload)", field="body")
    sent = kiln().signal(workflow_id, name, payload, key=key.strip() if key else None)
    return sent, 200 if sent["duplicate"] else 201


@blp.get(f"/workflows/<{ID}:workflow_id>/signals")
@blp.response(200, SignalListSchema)
def list_signals(workflow_id: int):  # type: ignore[no-untyped-def]
    """The signals sent to a run, oldest first, with the task that took each."""
    kiln().run(workflow_id)  # 404 for an unknown run
    return {"signals": kiln().signals(workflow_id)}
