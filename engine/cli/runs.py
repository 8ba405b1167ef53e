"""Commands that act on workflow runs: ``submit`` (without following), ``list``, ``cancel``,
``pause`` and ``resume``. Cancel, pause and resume are operations, as over HTTP: recorded,
then applied by a controller; the command waits for that (``--wait``, default 10 s)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from kiln.cli import control
from kiln.cli.common import console, err_console, fail, make_kiln
from kiln.cli.ops import _styled, _when
from kiln.core.redaction import redact
from kiln.core.states import WorkflowStatus


def load_definition(target: str) -> Any:
    """A workflow definition from ``FILE.json`` or ``package.module:workflow`` (an object or a
    function returning one), found from the working directory as ``KILN_IMPORTS`` modules are."""
    path = Path(target)
    if path.suffix == ".json" or path.exists():
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            fail(f"no such file: {target}")
        except json.JSONDecodeError as exc:
            fail(f"{target} is not valid JSON: {exc}")
    module_name, _, attr = target.partition(":")
    if not attr:
        fail(f"{target!r} is neither a .json file nor 'package.module:workflow'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        fail(f"cannot load {target!r}: {exc}")
    return obj() if callable(obj) else obj


def _wait_option(fn: Any) -> Any:
    fn = click.option(
        "--wait",
        "wait_s",
        default=10.0,
        show_default=True,
        type=click.FloatRange(0, 3600),
        help="Seconds to wait for a controller to apply it (0: record it and return).",
    )(fn)
    return click.option("--json", "as_json", is_flag=True, help="Print the operation as JSON.")(fn)


@click.command()
@click.argument("target")
@click.option("--idempotency-key", help="Submitting again with the same key returns the same run.")
@click.option("--json", "as_json", is_flag=True, help="Print {id, created} as JSON.")
def submit(target: str, idempotency_key: str | None, as_json: bool) -> None:
    """Submit a workflow (FILE.json or module:workflow), print its id and return at once;
    `kiln watch ID` follows it."""
    kiln = make_kiln()
    if kiln.settings.embedded_broker:
        kiln.upgrade()
    workflow_id, created = kiln.submit_with_status(
        load_definition(target), idempotency_key=idempotency_key
    )
    if as_json:
        click.echo(json.dumps({"id": workflow_id, "created": created}))
    else:
        again = "" if created else " (already submitted with this idempotency key)"
        console.print(f"workflow {workflow_id}{again} · follow it: kiln watch {workflow_id}")
    if kiln.settings.embedded_broker:
        err_console.print(
            "[yellow]note:[/] with the in-process broker (no KILN_BROKER_URL) no process runs "
            "it until a `kiln run` or `kiln demo` does"
        )
    for line in control.missing_processes(kiln).values():
        err_console.print(f"[yellow]warning:[/] {line}")


@click.command("list")
@click.option(
    "--status",
    type=click.Choice([s.value for s in WorkflowStatus]),
)
@click.option("--name", "name_contains", help="Only runs whose name contains this text.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print {workflows} as JSON.")
def list_runs(status: str | None, name_contains: str | None, limit: int, as_json: bool) -> None:
    """List workflow runs, newest first."""
    rows = [
        redact(r)
        for r in make_kiln().workflows(status=status, name_contains=name_contains, limit=limit)
    ]
    if as_json:
        click.echo(json.dumps({"workflows": rows}, default=str, indent=2))
        return
    table = Table(title=f"workflow runs · {len(rows)}")
    for col in ("id", "name", "status", "created", "finished", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["name"],
            _styled(str(r["status"])),
            _when(r["created_at"]),
            _when(r.get("finished_at")),
            r.get("error") or "",
        )
    console.print(table)


def _run_operation(operation: str, run_id: int, wait_s: float, as_json: bool) -> None:
    kiln = make_kiln()
    kiln.run(run_id)  # WorkflowNotFound before anything is recorded
    op = control.request(
        kiln, operation, {"workflow_id": run_id}, workflow_id=run_id, wait_s=wait_s
    )
    control.report(op, f"{operation} workflow {run_id}", as_json=as_json)


@click.command()
@click.argument("run_id", type=int)
@_wait_option
def cancel(run_id: int, wait_s: float, as_json: bool) -> None:
    """Cancel a workflow run: unfinished tasks are cancelled, running handlers are told."""
    _run_operation("cancel", run_id, wait_s, as_json)


@click.command()
@click.argument("run_id", type=int)
@_wait_option
def pause(run_id: int, wait_s: float, as_json: bool) -> None:
    """Pause a workflow run: nothing new is dispatched, running tasks finish."""
    _run_operation("pause", run_id, wait_s, as_json)


@click.command()
@click.argument("run_id", type=int)
@_wait_option
def resume(run_id: int, wait_s: float, as_json: bool) -> None:
    """Resume a paused workflow run."""
    _run_operation("resume", run_id, wait_s, as_json)


COMMANDS = [submit, list_runs, cancel, pause, resume]
