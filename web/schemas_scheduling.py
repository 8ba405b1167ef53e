"""Schemas of the TaskInstance registry, the predictor and the scheduler endpoints.

These endpoints keep contracts older than the API's conventions, so their request schemas
bend the usual marshmallow answers (unknown fields and query parameters are still a 422
naming them):

* a body that is not a JSON object is a 400 everywhere (as before the schemas);
* ``/instances``: every invalid value is a 422 (the registration contract), including a
  missing ``url`` or ``model_type`` (not the usual 400 ``missing_field``);
* ``/predict`` (seed 000) and ``/scheduler/*`` (seed 001): every invalid value is a 400,
  ``invalid_policy`` for the policy with the exact policy names.

The engine checks the values again (``kiln.instances``, ``kiln.predictor``,
``kiln.scheduler``): what a JSON schema cannot say (a blank name) is refused there.
Responses are sent as the engine builds them; their schemas document them and admit extra
keys.
"""

from __future__ import annotations

import re
from typing import Any

import marshmallow as ma
from flask import request
from marshmallow import fields, validate

from kiln.app.instances import REPORTED_STATES
from kiln.app.scheduler import QUANTUM_MAX_MICROS
from kiln.core.errors import InvalidPolicy, InvalidPredictRequest
from kiln.core.scheduling import POLICY_NAMES
from kiln.core.scheduling.placement import STRATEGIES
from kiln.core.scheduling.policies import POLICIES
from kiln.web.errors import BadRequest

UNKNOWN = "Unknown field."
LIMIT_MAX = 1000
INT_MAX = 2**31 - 1  # the instances table's integer columns


def _first_error(error: ma.ValidationError) -> tuple[str, str] | None:
    """The first (field, message) that is not an unknown field, or None when unknown fields
    are the only problem (those keep the usual 422 naming the field)."""
    messages = error.normalized_messages()
    for name in sorted(messages, key=str):
        msgs = messages[name]
        if msgs != [UNKNOWN]:
            text = msgs[0] if isinstance(msgs, list) and msgs else str(msgs)
            return str(name), str(text)
    return None


class _ObjectBody(ma.Schema):
    @ma.pre_load
    def _an_object(self, data: Any, **kwargs: Any) -> Any:
        # webargs hands an absent body (or one not sent as JSON) over as {}: look at the
        # request itself, these endpoints answered 400 to that too.
        if not isinstance(data, dict) or not isinstance(request.get_json(silent=True), dict):
            raise BadRequest("the request body must be a JSON object")
        return data


# --- instances ------------------------------------------------------------------------


def _required(name: str, what: str) -> dict[str, Any]:
    # A message of its own, so that a missing field is a 422 like any invalid one.
    return {"required": True, "error_messages": {"required": f"{name} is required ({what})."}}


class RegistrationSchema(_ObjectBody):
    name = fields.String(allow_none=True, metadata={"description": "default: '<model_type>@<url>'"})
    url = fields.String(
        validate=validate.Regexp(r"^\s*https?://", error="url must be an http(s) URL"),
        metadata={"description": "the instance's base URL; the same url is the same instance"},
        **_required("url", "an http(s) URL"),
    )
    model_type = fields.String(**_required("model_type", "a non-empty string"))
    hardware = fields.String(allow_none=True)
    software_version = fields.String(allow_none=True)
    capabilities = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "model types served besides model_type"},
    )
    max_concurrency = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=INT_MAX),
        metadata={"description": "per replica; default 1"},
    )


class HeartbeatSchema(_ObjectBody):
    status = fields.String(
        validate=validate.OneOf(REPORTED_STATES), metadata={"description": "default: running"}
    )
    active_tasks = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=0, max=INT_MAX)
    )
    queue_size = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=0, max=INT_MAX)
    )
    max_concurrency = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=0, max=INT_MAX),
        metadata={"description": "the current slot count (replicas x per-replica concurrency)"},
    )
    counters = fields.Raw(
        allow_none=True,
        metadata={"description": "{completed, failed, enqueued}; stored when an object"},
    )
    tasks = fields.Raw(
        allow_none=True,
        metadata={
            "description": "[{task_id, status, progress, message}]; the progress of running "
            "Kiln tasks (ids kiln-<task>-<attempt>) is recorded, other entries are ignored"
        },
    )


class _Open(ma.Schema):
    """A response schema that admits keys it does not list."""

    class Meta:
        unknown = ma.INCLUDE


class InstanceSchema(_Open):
    id = fields.Integer(required=True)
    name = fields.String()
    url = fields.String()
    model_type = fields.String()
    hardware = fields.String(allow_none=True)
    software_version = fields.String(allow_none=True)
    capabilities = fields.List(fields.String(), allow_none=True)
    max_concurrency = fields.Integer()
    slots = fields.Integer(allow_none=True)
    status = fields.String()
    live = fields.Boolean(metadata={"description": "running, with a recent heartbeat"})
    active_tasks = fields.Integer(allow_none=True)
    queue_size = fields.Integer(allow_none=True)
    counters = fields.Dict()
    kiln_tasks_running = fields.Integer()
    speed_factor = fields.Float(allow_none=True)
    registered_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    heartbeat_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    lost_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class RegisteredSchema(_Open):
    id = fields.Integer(required=True)
    created = fields.Boolean(required=True, metadata={"description": "false: url known"})
    instance = fields.Nested(InstanceSchema, allow_none=True)


class HeartbeatAnswerSchema(_Open):
    id = fields.Integer(required=True)
    status = fields.String(required=True)
    progress_updates = fields.Integer(required=True)
    requeued = fields.List(fields.Integer(), required=True)


class DeregisteredSchema(_Open):
    id = fields.Integer(required=True)
    deleted = fields.Boolean(required=True)
    requeued = fields.List(
        fields.Integer(), required=True, metadata={"description": "tasks retried elsewhere"}
    )


class InstanceListSchema(_Open):
    instances = fields.List(fields.Nested(InstanceSchema), required=True)
    count = fields.Integer(required=True)


# --- predictor (seed 000) -------------------------------------------------------------


class PredictRequestSchema(_ObjectBody):
    model_type = fields.String(required=True)
    metadata = fields.Dict(
        allow_none=True,
        metadata={"description": "hardware, software_version, input/output tokens, ..."},
    )

    def handle_error(self, error: ma.ValidationError, data: Any, **kwargs: Any) -> None:
        first = _first_error(error)
        if first is not None:
            raise InvalidPredictRequest(f"{first[0]}: {first[1]}", field=first[0])


class PredictionSchema(_Open):
    status = fields.String(required=True, metadata={"enum": ["success"]})
    model_type = fields.String(required=True)
    quantiles = fields.List(fields.Float(), required=True)
    quantile_predictions = fields.List(
        fields.Float(), required=True, metadata={"description": "milliseconds"}
    )
    prediction_method = fields.String(
        required=True, metadata={"enum": ["learned", "lookup", "external"]}
    )
    confidence = fields.Float(required=True)
    expected_ms = fields.Float(required=True)
    spread_ms = fields.Float(required=True)


class NoPredictionSchema(_Open):
    status = fields.String(required=True, metadata={"enum": ["error"]})
    error = fields.String(required=True, metadata={"enum": ["no_prediction_data"]})
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class PredictorHealthSchema(_Open):
    status = fields.String(required=True, metadata={"enum": ["healthy", "degraded"]})
    service = fields.String(required=True)
    version = fields.String(required=True)
    total_models = fields.Integer(required=True)
    sources = fields.Dict(required=True, metadata={"description": "learned, lookup, external"})


class ModelSummarySchema(_Open):
    model_type = fields.String(required=True)
    model_name = fields.String()
    total_predictions = fields.Integer()
    hardware_types = fields.List(fields.String())
    software_versions = fields.List(fields.String())
    sources = fields.List(fields.String())


class ModelListSchema(_Open):
    status = fields.String(required=True, metadata={"enum": ["success"]})
    models = fields.List(fields.Nested(ModelSummarySchema), required=True)


# --- scheduler (seed 001) -------------------------------------------------------------


def _params_doc() -> str:
    """Each policy's tuning parameters with their ranges, from the policies themselves."""
    lines = [
        f"{name}: " + (", ".join(f"{k} ({p.describe()})" for k, p in cls.PARAMS.items()) or "none")
        for name, cls in POLICIES.items()
    ]
    return "the policy's tuning parameters, merged into the stored ones; " + "; ".join(lines)


class PolicyRequestSchema(_ObjectBody):
    policy = fields.String(required=True, validate=validate.OneOf(POLICY_NAMES))
    params = fields.Dict(allow_none=True, metadata={"description": _params_doc()})
    quantum_micros = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=1, max=QUANTUM_MAX_MICROS)
    )
    placement = fields.String(allow_none=True, validate=validate.OneOf(STRATEGIES))

    def handle_error(self, error: ma.ValidationError, data: Any, **kwargs: Any) -> None:
        first = _first_error(error)
        if first is None:
            return
        messages = error.normalized_messages()
        if "policy" in messages and messages["policy"] != [UNKNOWN]:
            policy = data.get("policy") if isinstance(data, dict) else None
            raise InvalidPolicy(
                f"Invalid policy {policy!r}. Must be one of {', '.join(POLICY_NAMES)}",
                valid=list(POLICY_NAMES),
            )
        raise InvalidPolicy(f"{first[0]}: {first[1]}", field=first[0])


class PolicyChangedSchema(_Open):
    success = fields.Boolean(required=True)
    policy = fields.String(required=True)
    previous_policy = fields.String(required=True)
    placement = fields.String()
    quantum_micros = fields.Integer()
    message = fields.String(required=True)


class SchedulerStatsSchema(_Open):
    success = fields.Boolean(required=True)
    total_scheduled = fields.Integer(required=True)
    context_switches = fields.Integer(required=True)
    preemptions = fields.Integer(required=True)
    active = fields.Integer(required=True)
    active_processes = fields.Integer(required=True)
    policy = fields.String(required=True)
    quantum_micros = fields.Integer(required=True)
    placement = fields.String()
    params = fields.Dict()
    ready = fields.Integer()
    queued = fields.Integer()
    running = fields.Integer()
    available_policies = fields.List(fields.String())
    updated_at = fields.String(metadata={"format": "date-time"})
    params_error = fields.String(
        allow_none=True,
        metadata={"description": "why the stored params are ignored (the defaults run)"},
    )


class _Digits(fields.Integer):
    """An integer written with ASCII digits only (no sign, no spaces)."""

    DIGITS = re.compile(r"^[0-9]+$")

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and not self.DIGITS.match(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class ScheduleNextQuerySchema(ma.Schema):
    limit = _Digits(load_default=10, validate=validate.Range(min=1, max=LIMIT_MAX))

    def handle_error(self, error: ma.ValidationError, data: Any, **kwargs: Any) -> None:
        if _first_error(error) is not None:
            raise BadRequest(f"limit must be an integer between 1 and {LIMIT_MAX}", field="limit")


class QueuedTaskSchema(_Open):
    position = fields.Integer()
    task_id = fields.Integer()
    name = fields.String()
    workflow_id = fields.Integer()
    priority = fields.Integer()
    model_type = fields.String(allow_none=True)
    predicted_s = fields.Float(allow_none=True)
    waiting_reason = fields.String(allow_none=True)
    reason = fields.String()


class ScheduleNextSchema(_Open):
    success = fields.Boolean(required=True)
    policy = fields.String(required=True)
    next_task_id = fields.Integer(required=True, allow_none=True)
    next = fields.Nested(QueuedTaskSchema, required=True, allow_none=True)
    queue = fields.List(fields.Nested(QueuedTaskSchema), required=True)
    ready = fields.Integer(required=True)
    message = fields.String(metadata={"description": "when nothing is ready"})
