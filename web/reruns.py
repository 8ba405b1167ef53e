"""Rerun from failure over HTTP: ``POST /workflows/<id>/rerun {"from": "failed"}``."""

from __future__ import annotations

from flask_smorest import Blueprint

from kiln.web.common import MUTATING_DOC, idempotency_key, kiln, render_workflow
from kiln.web.schemas_schedules import RerunCreatedSchema, RerunSchema

blp = Blueprint("reruns", __name__, description="Rerunning a failed run from its failure.")
ID = "int(max=9223372036854775807)"


@blp.post(f"/workflows/<{ID}:workflow_id>/rerun")
@blp.arguments(RerunSchema())
@blp.response(201, RerunCreatedSchema)
@blp.alt_response(200, schema=RerunCreatedSchema, description="replayed: same Idempotency-Key")
@blp.doc(**MUTATING_DOC)
def rerun(data, workflow_id: int):  # type: ignore[no-untyped-def]
    """Start a new run of a failed or cancelled run's definition, linked by ``rerun_of``: its
    succeeded tasks are reused with their results (written ``succeeded``), the failed ones and
    everything downstream run again. 404 unknown run; 409 when the run is not failed or
    cancelled, or nothing failed."""
    new_id, created = kiln().reruns.rerun(workflow_id, idempotency_key=idempotency_key())
    run = kiln().workflow(new_id)
    reused = [t["name"] for t in run["tasks"] if t["status"] == "succeeded" and
              t["attempts"] == 0]  # fmt: skip
    summary = {k: run[k] for k in ("id", "name", "status", "rerun_of", "created_at")}
    return render_workflow({**summary, "reused": reused}), 201 if created else 200
