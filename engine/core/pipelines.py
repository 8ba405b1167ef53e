"""Pipelines and contexts as plain data: the pipeline lifecycle, configuration rules, and how
a context's rows are split into shards. Pure: the store and the API share these rules."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeGuard

from kiln.core.definitions import TaskSpec, WorkflowSpec
from kiln.core.errors import InvalidDefinition
from kiln.core.limits import DEFAULT_MAX_CONTEXT_SHARDS, check_count
from kiln.core.states import WorkflowStatus

PIPELINE_TYPES = ("vllm", "openai", "python")
# The built-in handler every shard task names; workers register it when they start.
SHARD_HANDLER = "kiln.pipeline_shard"
# What shard tasks written by older releases name instead (resolved to SHARD_HANDLER).
LEGACY_SHARD_HANDLERS = (
    "workers.pipeline_shards:run_shard",
    "kiln.workers.pipeline_shards:run_shard",
)
SHARD_MAX_ATTEMPTS = 3
RATE_LIMIT_MAX = 2**31 - 1  # rpm_limit / tpm_limit are INTEGER columns


class PipelineStatus(enum.StrEnum):
    """Lifecycle of a pipeline; it follows the backing workflow, except ``deleted``.

    =========  ==============================================  ===========================
    status     backing workflow                                reached by
    =========  ==============================================  ===========================
    new        pending (no shard dispatched yet)               creation, clone
    ongoing    running                                         first shard dispatched,
                                                               resume
    stopped    paused (the running shard finishes and counts)  stop
    completed  succeeded (every shard succeeded)               last shard
    failed     failed (a shard failed all its attempts) or     shard failure,
               cancelled through the workflow API              workflow cancel
    deleted    cancelled, results discarded                    delete
    =========  ==============================================  ===========================

    Allowed moves are :data:`PIPELINE_TRANSITIONS`; the operations check them:
    stop needs new|ongoing, resume needs stopped, delete anything but completed|deleted.
    """

    NEW = "new"
    ONGOING = "ongoing"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"


PIPELINE_STATES = tuple(s.value for s in PipelineStatus)

PIPELINE_TRANSITIONS: dict[PipelineStatus, frozenset[PipelineStatus]] = {
    PipelineStatus.NEW: frozenset(
        {
            PipelineStatus.ONGOING,
            PipelineStatus.STOPPED,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.ONGOING: frozenset(
        {
            PipelineStatus.STOPPED,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.STOPPED: frozenset(
        {
            PipelineStatus.ONGOING,
            PipelineStatus.COMPLETED,
            PipelineStatus.FAILED,
            PipelineStatus.DELETED,
        }
    ),
    PipelineStatus.FAILED: frozenset({PipelineStatus.DELETED}),
    PipelineStatus.COMPLETED: frozenset(),
    PipelineStatus.DELETED: frozenset(),
}

FROM_WORKFLOW = {
    WorkflowStatus.PENDING: PipelineStatus.NEW,
    WorkflowStatus.RUNNING: PipelineStatus.ONGOING,
    WorkflowStatus.PAUSED: PipelineStatus.STOPPED,
    WorkflowStatus.SUCCEEDED: PipelineStatus.COMPLETED,
    WorkflowStatus.FAILED: PipelineStatus.FAILED,
    WorkflowStatus.CANCELLED: PipelineStatus.FAILED,
}


def derive_status(stored: str, workflow_status: str | None) -> PipelineStatus:
    """The pipeline's status from its stored one and its backing workflow's."""
    if stored == PipelineStatus.DELETED or workflow_status is None:
        return PipelineStatus(stored)
    return FROM_WORKFLOW[WorkflowStatus(workflow_status)]


def shard_task_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_index_of(task_name: str) -> int:
    return int(task_name.rsplit("-", 1)[1])


def shard_workflow(pipeline_id: int, name: str, num_shards: int) -> WorkflowSpec:
    """The backing workflow of a pipeline: one task per shard, each depending on the one
    before. Built as a spec directly: it is valid by construction, so it skips
    ``parse_definition`` and costs one small object per shard."""
    return WorkflowSpec(
        name=f"pipeline {pipeline_id}: {name}",
        on_error="stop",
        tasks=tuple(
            TaskSpec(
                name=shard_task_name(i),
                handler=SHARD_HANDLER,
                params={"pipeline_id": pipeline_id, "shard_index": i},
                depends_on=(shard_task_name(i - 1),) if i else (),
                max_attempts=SHARD_MAX_ATTEMPTS,
            )
            for i in range(num_shards)
        ),
    )


# --- configuration --------------------------------------------------------------------

CONFIG_FIELDS = (
    "pipeline_name", "pipeline_type", "model_config", "sampling_params", "client_config",
    "rpm_limit", "tpm_limit",
)  # fmt: skip


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    pipeline_type: str
    model_config: dict[str, Any]
    sampling_params: dict[str, Any] | None = None
    client_config: dict[str, Any] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


def infer_type(data: dict[str, Any]) -> str:
    """Seed 004's clone example has no ``pipeline_type``: openai when a ``client_config`` is
    given, python when ``model_config`` names a ``handler``, vllm otherwise."""
    if data.get("client_config"):
        return "openai"
    if isinstance(data.get("model_config"), dict) and "handler" in data["model_config"]:
        return "python"
    return "vllm"


def _non_empty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def validate_config(data: dict[str, Any]) -> PipelineConfig:
    """Check a pipeline configuration (the API's and the controller's one rule set); raise
    :class:`InvalidDefinition` naming the field."""
    name = data.get("pipeline_name")
    if not _non_empty_str(name):
        raise InvalidDefinition("pipeline_name must be a non-empty string", field="pipeline_name")
    ptype = data.get("pipeline_type") or infer_type(data)
    if ptype not in PIPELINE_TYPES:
        raise InvalidDefinition(
            f"pipeline_type must be one of {', '.join(PIPELINE_TYPES)}", field="pipeline_type"
        )
    model_config = data.get("model_config")
    if not isinstance(model_config, dict):
        raise InvalidDefinition("model_config must be an object", field="model_config")
    for key in ("sampling_params", "client_config"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise InvalidDefinition(f"{key} must be an object", field=key)
    for key in ("rpm_limit", "tpm_limit"):
        v = data.get(key)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= RATE_LIMIT_MAX
        ):
            raise InvalidDefinition(
                f"{key} must be an integer between 1 and {RATE_LIMIT_MAX}", field=key
            )
    if ptype == "python" and not _non_empty_str(model_config.get("handler")):
        raise InvalidDefinition(
            "a python pipeline needs model_config.handler (a registered handler name or "
            "'package.module:function')",
            field="model_config.handler",
        )
    if ptype in ("vllm", "openai") and not _non_empty_str(model_config.get("model")):
        raise InvalidDefinition(
            f"{'an' if ptype == 'openai' else 'a'} {ptype} pipeline needs model_config.model",
            field="model_config.model",
        )
    if ptype == "openai" and not _non_empty_str((data.get("client_config") or {}).get("base_url")):
        raise InvalidDefinition(
            "an openai pipeline needs client_config.base_url", field="client_config.base_url"
        )
    return PipelineConfig(
        name=name.strip(),
        pipeline_type=ptype,
        model_config=model_config,
        sampling_params=data.get("sampling_params"),
        client_config=data.get("client_config"),
        rpm_limit=data.get("rpm_limit"),
        tpm_limit=data.get("tpm_limit"),
    )


def merge_overrides(parent: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A clone's configuration: the parent's, with each given field replaced; the three
    config objects are merged one level deep (so ``{"model_config": {"temperature": 0}}``
    keeps the parent's model)."""
    out = {k: parent.get(k) for k in CONFIG_FIELDS}
    out["context_id"] = parent.get("context_id")
    for key, value in overrides.items():
        if key in ("model_config", "sampling_params", "client_config") and isinstance(value, dict):
            out[key] = {**(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


# --- contexts: splitting rows into shards -----------------------------------------------


def split_rows(rows: list[Any], num_shards: int) -> list[list[Any]]:
    """``num_shards`` contiguous chunks of ``rows`` whose sizes differ by at most one (the
    first ones get the extra rows); chunks may be empty when there are fewer rows."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    size, extra = divmod(len(rows), num_shards)
    out, start = [], 0
    for i in range(num_shards):
        end = start + size + (1 if i < extra else 0)
        out.append(rows[start:end])
        start = end
    return out


def shards_from_request(
    *,
    shards: list[list[Any]] | None,
    rows: list[Any] | None,
    source: str | None,
    num_shards: int | None,
    max_shards: int = DEFAULT_MAX_CONTEXT_SHARDS,
) -> tuple[list[list[Any]] | None, int]:
    """Decide the shards of a new context from the three accepted forms: explicit
    ``shards``; ``rows`` split into ``num_shards``; or a ``source`` with ``num_shards``.
    Returns ``(inline shards or None for a source, num_shards)``. More than ``max_shards``
    raises :class:`~kiln.core.errors.LimitExceeded` before anything is split."""
    given = [name for name, v in (("shards", shards), ("rows", rows), ("source", source)) if v]
    if len(given) != 1:
        raise InvalidDefinition(
            "give exactly one of 'shards' (a list of row lists), 'rows' (with num_shards) or "
            "'source' (a path or URL, with num_shards)",
            field="shards",
        )
    if shards is not None and given == ["shards"]:
        if num_shards is not None and num_shards != len(shards):
            raise InvalidDefinition(
                f"num_shards is {num_shards} but {len(shards)} shards were given",
                field="num_shards",
            )
        check_count("shards", len(shards), max_shards, "KILN_MAX_CONTEXT_SHARDS")
        return shards, len(shards)
    if num_shards is None:
        raise InvalidDefinition(f"num_shards is required with '{given[0]}'", field="num_shards")
    if num_shards < 1:
        raise InvalidDefinition("num_shards must be at least 1", field="num_shards")
    check_count("shards", num_shards, max_shards, "KILN_MAX_CONTEXT_SHARDS")
    if rows is not None and given == ["rows"]:
        return split_rows(rows, num_shards), num_shards
    return None, num_shards
