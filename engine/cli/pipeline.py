"""``kiln pipeline stop|resume|delete|clone ID``: the dispatcher's operations (seed 004) from
the command line, recorded and applied as ``POST /dispatcher/...-pipeline`` does. ``kiln
pipelines`` lists them."""

from __future__ import annotations

import json
from typing import Any

import click

from kiln.cli import control
from kiln.cli.common import fail, make_kiln
from kiln.cli.runs import _wait_option

# What a clone may override of its parent's configuration (the API's PipelineConfigSchema).
CLONE_FIELDS = (
    "pipeline_name", "pipeline_type", "model_config", "sampling_params", "client_config",
    "rpm_limit", "tpm_limit",
)  # fmt: skip


@click.group()
def pipeline() -> None:
    """Act on one pipeline: stop, resume, delete or clone it (`kiln pipelines` lists them)."""


def _act(operation: str, pipeline_id: int, data: dict[str, Any], wait_s: float, as_json: bool):  # type: ignore[no-untyped-def]
    kiln = make_kiln()
    op = control.request(
        kiln, operation, {"pipeline_id": pipeline_id, **data}, pipeline_id=pipeline_id,
        wait_s=wait_s,
    )  # fmt: skip
    control.report(op, f"{operation} pipeline {pipeline_id}", as_json=as_json)


@pipeline.command()
@click.argument("pipeline_id", type=int)
@_wait_option
def stop(pipeline_id: int, wait_s: float, as_json: bool) -> None:
    """Stop a pipeline: the running shard finishes and counts, the rest wait for resume."""
    _act("stop", pipeline_id, {}, wait_s, as_json)


@pipeline.command()
@click.argument("pipeline_id", type=int)
@_wait_option
def resume(pipeline_id: int, wait_s: float, as_json: bool) -> None:
    """Resume a stopped pipeline at its first shard not completed."""
    _act("resume", pipeline_id, {}, wait_s, as_json)


@pipeline.command()
@click.argument("pipeline_id", type=int)
@_wait_option
def delete(pipeline_id: int, wait_s: float, as_json: bool) -> None:
    """Delete a pipeline: unfinished shards are cancelled, outputs discarded, the row kept."""
    _act("delete", pipeline_id, {}, wait_s, as_json)


@pipeline.command()
@click.argument("pipeline_id", type=int)
@click.option("--name", help="The new pipeline's name (default: the parent's).")
@click.option("--context", "context_id", type=int, help="Run on this context instead.")
@click.option(
    "--config",
    "config_json",
    help="More overrides of the parent's configuration, as a JSON object, e.g. "
    '\'{"model_config": {"handler": "myapp.tasks:label"}}\'.',
)
@_wait_option
def clone(
    pipeline_id: int,
    name: str | None,
    context_id: int | None,
    config_json: str | None,
    wait_s: float,
    as_json: bool,
) -> None:
    """Start a new pipeline with a pipeline's configuration (and overrides), at shard 0."""
    try:
        overrides = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as exc:
        fail(f"--config is not valid JSON: {exc}")
    if not isinstance(overrides, dict):
        fail("--config must be a JSON object")
    unknown = sorted(set(overrides) - set(CLONE_FIELDS))
    if unknown:
        fail(f"--config: unknown field {unknown[0]!r} (allowed: {', '.join(CLONE_FIELDS)})")
    if name is not None:
        overrides["pipeline_name"] = name
    if context_id is not None:
        overrides["context_id"] = context_id
    data = {"parent_pipeline_id": pipeline_id, **overrides}
    kiln = make_kiln()
    kiln.pipelines.check_clone(data)  # a bad request fails here, before anything is recorded
    op = control.request(kiln, "clone", data, pipeline_id=pipeline_id, wait_s=wait_s)
    control.report(op, f"clone pipeline {pipeline_id}", as_json=as_json)


COMMANDS = [pipeline]
