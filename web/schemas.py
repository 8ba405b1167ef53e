"""Request and response schemas of the API (marshmallow); the OpenAPI document at
``/openapi.json`` is generated from them. Request schemas reject unknown fields (422)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from kiln.app.runtime import SUBMIT_BATCH_MAX
from kiln.core.clock import aware
from kiln.core.definitions import MAX_ATTEMPTS, PRIORITY_MAX, PRIORITY_MIN
from kiln.core.operations import OPERATION_KINDS, OPERATION_STATES
from kiln.core.pipelines import PIPELINE_STATES, PIPELINE_TYPES, RATE_LIMIT_MAX

BIGINT_MAX = 2**63 - 1
Id = {"strict": True, "validate": validate.Range(min=1, max=BIGINT_MAX)}
WAIT_MAX_S = 30.0
TASKS_PAGE = 1000  # GET /workflows/<id>: tasks per page by default (a run has up to 10,000)
Priority = {"strict": True, "validate": validate.Range(min=PRIORITY_MIN, max=PRIORITY_MAX)}
RateLimit = {"strict": True, "allow_none": True, "validate": validate.Range(1, RATE_LIMIT_MAX)}


def unix(value: dt.datetime | None) -> float | None:
    """Unix seconds; a naive datetime (SQLite hands those back) is UTC, as Kiln stores."""
    if value is None:
        return None
    return aware(value).timestamp()


# --- shared ---------------------------------------------------------------------------


class OperationCreatedSchema(ma.Schema):
    ic_id = fields.String(required=True, metadata={"description": "operation id (uuid4 hex)"})
    message = fields.String(required=True)


# --- workflows ------------------------------------------------------------------------


class TaskDefinitionSchema(ma.Schema):
    name = fields.String(required=True)
    handler = fields.String(metadata={"description": "registered name or 'pkg.mod:function'"})
    model_type = fields.String()
    params = fields.Raw(metadata={"description": "any JSON; may hold {{Task.result}} refs"})
    depends_on = fields.List(fields.String())
    max_attempts = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ATTEMPTS))
    retry = fields.Dict(
        metadata={
            "description": "retry policy: {max_attempts, backoff_s, max_backoff_s, jitter (0..1), "
            "on: ['module:ExceptionName', ...]}; unset keys use the deployment's defaults"
        }
    )
    timeout_s = fields.Float(
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "seconds; at most KILN_MAX_TIMEOUT_S (default 7 days)"},
    )
    priority = fields.Integer(**Priority)
    queue = fields.String(
        validate=validate.Regexp(r"^[a-z0-9_-]{1,64}$"),
        metadata={
            "description": "the worker pool (`kiln worker --queues`); default queue if unset"
        },
    )
    map = fields.String(
        metadata={
            "description": "run once per item of an upstream result, e.g. "
            "'{{Split.result.chunks}}' (an implicit dependency); params may use {{item}} and "
            "{{index}}; the items are tasks Name[0], Name[1]...; {{Name.result}} is the list "
            "of their results in item order"
        }
    )
    workflow = fields.String(
        metadata={
            "description": "kind workflow: 'package.module:attribute' naming a definition, "
            "run as a child run of this task; the task's result is the child's results"
        }
    )
    sleep = fields.Raw(
        metadata={
            "description": "kind sleep: seconds or an ISO 8601 duration ('PT1H'), counted from "
            "when the task first runs"
        }
    )
    until = fields.String(metadata={"description": "kind sleep: a time with its zone"})
    signal = fields.String(
        metadata={
            "description": "kind signal: waits for POST /workflows/<id>/signals/<signal>; "
            "its result is the payload"
        }
    )
    timeout = fields.Raw(
        metadata={"description": "kind signal: seconds or an ISO 8601 duration to wait"}
    )
    on_timeout = fields.Raw(
        metadata={"description": "kind signal: 'fail' (default) or {'continue': VALUE}"}
    )


class WorkflowDefinitionSchema(ma.Schema):
    name = fields.String(required=True)
    tasks = fields.List(fields.Nested(TaskDefinitionSchema), required=True)
    on_error = fields.String(validate=validate.OneOf(["stop", "continue"]))
    priority = fields.Integer(**Priority)


class WorkflowBatchItemSchema(ma.Schema):
    definition = fields.Nested(WorkflowDefinitionSchema, required=True)
    idempotency_key = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "as the Idempotency-Key header of POST /workflows, for this "
                  "run alone (the same key there and here names the same run)"},
    )  # fmt: skip


def batch_of(item: type[ma.Schema]) -> fields.List:
    """A batch's ``workflows``: 1 to ``SUBMIT_BATCH_MAX`` items, each an ``item``."""
    return fields.List(
        fields.Nested(item), required=True, validate=validate.Length(min=1, max=SUBMIT_BATCH_MAX)
    )


class WorkflowBatchSchema(ma.Schema):
    workflows = batch_of(WorkflowBatchItemSchema)


class WorkflowBatchEnvelopeItemSchema(WorkflowBatchItemSchema):
    definition = fields.Dict(required=True)


class WorkflowBatchEnvelopeSchema(ma.Schema):
    """A batch's envelope: :class:`WorkflowBatchSchema` without looking inside the
    definitions, which the engine validates (``kiln.web.workflows.submit_batch``). It refuses
    nothing the full schema accepts."""

    workflows = batch_of(WorkflowBatchEnvelopeItemSchema)


class WorkflowBatchEntrySchema(ma.Schema):
    id = fields.Integer(required=True)
    created = fields.Boolean(
        required=True, metadata={"description": "false: replayed by its idempotency key"}
    )


class WorkflowBatchResultSchema(ma.Schema):
    workflows = fields.List(fields.Nested(WorkflowBatchEntrySchema), required=True)


class WorkflowWaitQuerySchema(ma.Schema):
    wait = fields.Float(
        validate=validate.Range(min=0, max=WAIT_MAX_S),
        metadata={"description": f"block up to this many seconds (max {WAIT_MAX_S:g}) "
                  "until the run is succeeded, failed or cancelled"},
    )  # fmt: skip
    tasks_limit = fields.Integer(
        validate=validate.Range(min=1, max=10_000),
        metadata={"description": f"tasks per page, in id order (default {TASKS_PAGE})"},
    )
    tasks_after = fields.Integer(
        validate=validate.Range(min=0, max=BIGINT_MAX),
        metadata={"description": "only tasks with a larger id: the previous page's "
                  "tasks_next_after"},
    )  # fmt: skip


class WorkflowListQuerySchema(ma.Schema):
    status = fields.String(
        validate=validate.OneOf(
            ["pending", "running", "paused", "succeeded", "failed", "cancelled"]
        )
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    before_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))


class AttemptSchema(ma.Schema):
    attempt = fields.Integer()
    worker = fields.String()
    outcome = fields.String()
    error = fields.String(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class TaskSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    handler = fields.String(allow_none=True)
    model_type = fields.String(allow_none=True)
    status = fields.String()
    params = fields.Raw(allow_none=True)
    depends_on = fields.List(fields.String())
    attempts = fields.Integer()
    max_attempts = fields.Integer()
    timeout_s = fields.Float(allow_none=True)
    retry = fields.Dict(allow_none=True, metadata={"description": "the task's own retry policy"})
    priority = fields.Integer()
    queue = fields.String(allow_none=True)
    waiting_reason = fields.String(
        allow_none=True,
        metadata={"description": "why a ready task is not dispatched, or what a waiting one "
                  "waits for"},
    )  # fmt: skip
    map_over = fields.String(allow_none=True, metadata={"description": "a map task's list"})
    mapped_from = fields.Integer(
        allow_none=True, metadata={"description": "a mapped item: its map task's id"}
    )
    map_index = fields.Integer(allow_none=True, metadata={"description": "a mapped item's place"})
    wake_at = fields.DateTime(
        allow_none=True,
        metadata={"description": "waiting: ready again at this time (a sleep's end, a deadline)"},
    )
    waiting_signal = fields.String(
        allow_none=True, metadata={"description": "waiting: the signal it waits for"}
    )
    resumes = fields.Integer(
        metadata={"description": "times it resumed after waiting for child runs"}
    )
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    progress = fields.Float(allow_none=True)
    progress_message = fields.String(allow_none=True)
    created_at = fields.DateTime(allow_none=True)
    ready_at = fields.DateTime(allow_none=True)
    queued_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    attempt_history = fields.List(fields.Nested(AttemptSchema))


class WorkflowSchema(ma.Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    status = fields.String(required=True)
    error = fields.String(allow_none=True)
    created_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)


class ChildRunSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    status = fields.String()
    parent_task_id = fields.Integer()
    child_key = fields.String()


class RerunLinkSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    status = fields.String()


class WorkflowDetailSchema(WorkflowSchema):
    on_error = fields.String()
    priority = fields.Integer()
    parent_workflow_id = fields.Integer(
        allow_none=True, metadata={"description": "a child run: the run that started it"}
    )
    parent_task_id = fields.Integer(
        allow_none=True, metadata={"description": "a child run: the task that started it"}
    )
    child_key = fields.String(allow_none=True)
    children = fields.List(
        fields.Nested(ChildRunSchema), metadata={"description": "the runs this run's tasks started"}
    )
    rerun_of = fields.Integer(
        allow_none=True, metadata={"description": "a rerun: the run whose results it reused"}
    )
    reruns = fields.List(
        fields.Nested(RerunLinkSchema),
        metadata={"description": "the reruns of this run, oldest first"},
    )
    tasks = fields.List(fields.Nested(TaskSchema))
    tasks_total = fields.Integer(metadata={"description": "the run's tasks, on every page"})
    tasks_next_after = fields.Integer(
        allow_none=True,
        metadata={"description": "tasks_after for the next page; null on the last"},
    )


class WorkflowListSchema(ma.Schema):
    workflows = fields.List(fields.Nested(WorkflowSchema), required=True)


# --- contexts -------------------------------------------------------------------------


class ContextCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=500))
    config = fields.Dict(load_default=dict, metadata={"description": "shared configuration"})
    shards = fields.List(
        fields.List(fields.Raw()),
        metadata={"description": "the rows of each shard (one list per shard)"},
    )
    rows = fields.List(fields.Raw(), metadata={"description": "rows split into num_shards"})
    source = fields.String(
        validate=validate.Length(min=1, max=2000),
        metadata={"description": "path or URL of a JSON array / JSON-lines file (workers read it)"},
    )
    num_shards = fields.Integer(
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "at most KILN_MAX_CONTEXT_SHARDS (default 10,000); more: 413"},
    )


class ShardSizeSchema(ma.Schema):
    shard_index = fields.Integer()
    num_rows = fields.Integer(allow_none=True)


class ContextSchema(ma.Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    source = fields.String(allow_none=True)
    num_shards = fields.Integer(required=True)
    num_rows = fields.Integer(allow_none=True)
    config = fields.Dict()
    created_at = fields.DateTime()
    shards = fields.List(fields.Nested(ShardSizeSchema))


# --- pipelines ------------------------------------------------------------------------


class PipelineConfigSchema(ma.Schema):
    """The configuration fields of a pipeline (create and clone)."""

    pipeline_name = fields.String(validate=validate.Length(min=1, max=500))
    pipeline_type = fields.String(
        validate=validate.OneOf(PIPELINE_TYPES),
        metadata={"description": "default: openai with client_config, python with "
                  "model_config.handler, vllm otherwise"},
    )  # fmt: skip
    model_config = fields.Dict(
        metadata={"description": "python: handler; vllm: model, instance_url; openai: model "
                  "and chat parameters"},
    )  # fmt: skip
    sampling_params = fields.Dict(allow_none=True)
    client_config = fields.Dict(
        allow_none=True, metadata={"description": "openai: base_url, api_key (never returned)"}
    )
    rpm_limit = fields.Integer(**RateLimit)
    tpm_limit = fields.Integer(**RateLimit)


class PipelineCreateSchema(PipelineConfigSchema):
    context_id = fields.Integer(required=True, **Id)
    pipeline_name = fields.String(required=True, validate=validate.Length(min=1, max=500))
    model_config = fields.Dict(required=True)


class ShardSchema(ma.Schema):
    shard_index = fields.Integer()
    status = fields.String()
    attempts = fields.Integer()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    progress = fields.Float(allow_none=True)
    result = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)


class PipelineSchema(ma.Schema):
    id = fields.Integer(required=True)
    pipeline_name = fields.String(attribute="name", required=True)
    context_id = fields.Integer(required=True)
    pipeline_type = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": list(PIPELINE_STATES)})
    workflow_id = fields.Integer(allow_none=True)
    model_config = fields.Dict()
    sampling_params = fields.Dict(allow_none=True)
    client_config = fields.Dict(allow_none=True, metadata={"description": "secrets as ***"})
    rpm_limit = fields.Integer(allow_none=True)
    tpm_limit = fields.Integer(allow_none=True)
    cloned_from = fields.Integer(allow_none=True)
    num_shards = fields.Integer(required=True)
    shards_completed = fields.Integer(required=True)
    current_shard_id = fields.Integer(
        allow_none=True, metadata={"description": "next shard to run; null when all ran"}
    )
    total_samples_processed = fields.Integer(required=True)
    progress = fields.String(required=True, metadata={"description": "k/N shards"})
    created_at = fields.DateTime()
    deleted_at = fields.DateTime(allow_none=True)


class PipelineDetailSchema(PipelineSchema):
    shards = fields.List(fields.Nested(ShardSchema))


class PipelineListQuerySchema(ma.Schema):
    status = fields.String(validate=validate.OneOf(PIPELINE_STATES))
    context_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    before_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))


class PipelineListSchema(ma.Schema):
    pipelines = fields.List(fields.Nested(PipelineSchema), required=True)


# --- dispatcher -----------------------------------------------------------------------


class PipelineIdSchema(ma.Schema):
    pipeline_id = fields.Integer(required=True, **Id)


class CloneSchema(PipelineConfigSchema):
    context_id = fields.Integer(
        metadata={"description": "context of the new pipeline (default: the parent's)"}, **Id
    )
    parent_pipeline_id = fields.Integer(
        metadata={"description": "clone this pipeline's configuration, with overrides"}, **Id
    )


class HealthSchema(ma.Schema):
    status = fields.String(required=True)
    database = fields.String(required=True)


class OperationSchema(ma.Schema):
    ic_id = fields.String(required=True)
    pipeline_id = fields.Integer(allow_none=True, required=True)
    workflow_id = fields.Integer(allow_none=True)
    operation = fields.String(required=True, metadata={"enum": list(OPERATION_KINDS)})
    status = fields.String(required=True, metadata={"enum": list(OPERATION_STATES)})
    error = fields.String(required=True, metadata={"description": "empty unless failed"})
    created_at = fields.Float(required=True, metadata={"description": "Unix seconds"})
    processed_at = fields.Float(allow_none=True, required=True)
    request_data = fields.Dict(metadata={"description": "the request (secrets as ***)"})
    result = fields.Dict(allow_none=True, metadata={"description": "clone: pipeline_id"})


class OperationStatusQuerySchema(ma.Schema):
    wait = fields.Float(
        validate=validate.Range(min=0, max=WAIT_MAX_S),
        metadata={"description": f"block up to this many seconds (max {WAIT_MAX_S:g}) "
                  "until the operation is completed or failed"},
    )  # fmt: skip


class OperationListQuerySchema(ma.Schema):
    status = fields.String(validate=validate.OneOf(OPERATION_STATES))
    pipeline_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    workflow_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    operation = fields.String(validate=validate.OneOf(OPERATION_KINDS))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10**9))


class OperationListSchema(ma.Schema):
    operations = fields.List(fields.Nested(OperationSchema), required=True)
    total = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


def without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
