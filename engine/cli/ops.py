"""Operator commands of the ``kiln`` CLI: ``watch``, ``ops``, ``instances``, ``pipelines``
and ``scheduler``. Each prints a rich view for people, or with ``--json`` one JSON document
for scripts (``watch --json``: one JSON object per line, a snapshot whenever something
changed; the last line is the final state).

Exit codes: 0 ok; 1 for ``watch`` when the run ended other than ``succeeded``; 2 for client
mistakes (unknown run, invalid policy); 3 for ``watch`` when the run is paused (a stopped
pipeline) with nothing left running.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from kiln.cli.common import console, err_console, make_kiln
from kiln.cli.control import Liveness
from kiln.core.clock import aware, utcnow
from kiln.core.redaction import redact
from kiln.core.states import WORKFLOW_TERMINAL

FINISHED = ("succeeded", "failed", "cancelled", "upstream_failed")
STYLE = {
    "succeeded": "green",
    "completed": "green",
    "failed": "red",
    "upstream_failed": "red",
    "cancelled": "yellow",
    "stopped": "yellow",
    "paused": "yellow",
    "running": "cyan",
    "ongoing": "cyan",
    "processing": "cyan",
    "queued": "blue",
    "retrying": "magenta",
    "pending": "dim",
    "new": "dim",
    "lost": "red",
    "deleted": "dim",
}


def _dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(value, default=str, **kwargs)


def _styled(state: str | None) -> str:
    state = state or ""
    return f"[{STYLE.get(state, '')}]{state}[/]" if STYLE.get(state) else state


def _ago(value: Any) -> str:
    value = aware(value)
    if value is None:
        return ""
    seconds = (utcnow() - value).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    value = aware(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


# --- watch ------------------------------------------------------------------------------


def snapshot(kiln: Any, workflow_id: int) -> dict[str, Any]:
    """A run's progress: counts by state, the fraction finished, running tasks' own progress
    and, when the run backs a pipeline, the pipeline's shard progress."""
    run = redact(kiln.workflow(workflow_id))
    by_state: dict[str, int] = {}
    for t in run["tasks"]:
        by_state[t["status"]] = by_state.get(t["status"], 0) + 1
    total = len(run["tasks"])
    finished = sum(by_state.get(s, 0) for s in FINISHED)
    return {
        "workflow_id": run["id"],
        "name": run["name"],
        "status": run["status"],
        "tasks": total,
        "finished": finished,
        "fraction": round(finished / total, 4) if total else 1.0,
        "by_state": dict(sorted(by_state.items())),
        "running": [
            {
                "task": t["name"],
                "attempt": t["attempts"],
                "progress": t.get("progress"),
                "message": t.get("progress_message"),
            }
            for t in run["tasks"]
            if t["status"] == "running"
        ],  # fmt: skip
        "pipeline": _pipeline_of(kiln, run["id"]),
        "error": run.get("error"),
        "_run": run,
    }


def _pipeline_of(kiln: Any, workflow_id: int) -> dict[str, Any] | None:
    pid = kiln.monitor.pipeline_of_workflow(workflow_id)
    if pid is None:
        return None
    p = kiln.pipelines.get(pid, shards=False)
    return {
        "id": p["id"],
        "name": p["name"],
        "status": str(p["status"]),
        "shards_completed": p["shards_completed"],
        "num_shards": p["num_shards"],
        "total_samples_processed": p["total_samples_processed"],
    }


def _bar(completed: float, total: float, style: str = "bar.complete") -> ProgressBar:
    return ProgressBar(total=max(total, 1e-9), completed=completed, width=40, complete_style=style)


def progress_view(snap: dict[str, Any]) -> Group:
    """Progress bars: the run, its pipeline (if any), and each running task."""
    grid = Table.grid(padding=(0, 1))
    for _ in range(3):
        grid.add_column()
    done_style = "green" if snap["status"] == "succeeded" else "bar.complete"
    if snap["status"] in ("failed", "cancelled"):
        done_style = "red"
    grid.add_row(
        f"[bold]workflow {snap['workflow_id']}[/] {snap['name']}",
        _bar(snap["finished"], snap["tasks"], done_style),
        f"{snap['finished']}/{snap['tasks']} tasks · {_styled(snap['status'])}",
    )
    p = snap["pipeline"]
    if p:
        grid.add_row(
            f"[bold]pipeline {p['id']}[/] {p['name']}",
            _bar(p["shards_completed"], p["num_shards"]),
            f"{p['shards_completed']}/{p['num_shards']} shards · {_styled(p['status'])} · "
            f"{p['total_samples_processed']} samples",
        )
    for t in snap["running"]:
        fraction = t["progress"] or 0.0
        grid.add_row(
            f"  {t['task']} (attempt {t['attempt']})",
            _bar(fraction, 1.0, "cyan"),
            f"{fraction:.0%} {t['message'] or ''}".rstrip(),
        )
    counts = " · ".join(f"{_styled(s)} {n}" for s, n in snap["by_state"].items())
    return Group(grid, counts)


def _settled(snap: dict[str, Any]) -> bool:
    if snap["status"] in WORKFLOW_TERMINAL:
        return True
    # A paused run (a stopped pipeline) with nothing in flight will not move on its own.
    in_flight = sum(snap["by_state"].get(s, 0) for s in ("queued", "running"))
    return snap["status"] == "paused" and in_flight == 0


def exit_code(status: str) -> int:
    return 0 if status == "succeeded" else 3 if status == "paused" else 1


def follow_progress(
    kiln: Any,
    workflow_id: int,
    out: Console,
    *,
    interval: float = 0.2,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Live progress bars until the run ends (or is paused with nothing running), then the
    per-task table; returns the final run (as ``kiln.workflow`` does). ``on_tick`` is called
    on every refresh (``kiln run`` checks that workers and a controller are alive)."""
    from rich.live import Live

    from kiln.cli.display import run_table

    snap = snapshot(kiln, workflow_id)
    with Live(progress_view(snap), console=out, refresh_per_second=8, transient=True) as live:
        while not _settled(snap):
            if on_tick is not None:
                on_tick()
            time.sleep(interval)
            snap = snapshot(kiln, workflow_id)
            live.update(progress_view(snap))
    out.print(progress_view(snap))
    out.print(run_table(snap["_run"]))
    return snap["_run"]


def _public(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if not k.startswith("_")}


@click.command()
@click.argument("run_id", type=int)
@click.option("--pipeline", "is_pipeline", is_flag=True, help="RUN_ID is a pipeline id.")
@click.option("--interval", default=0.2, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: one snapshot per change.")
def watch(run_id: int, is_pipeline: bool, interval: float, as_json: bool) -> None:
    """Follow a workflow run (or --pipeline) with live progress bars until it ends.

    Exits 0 if it succeeded, 1 if it failed or was cancelled, 3 if it is paused (a stopped
    pipeline) with nothing running.
    """
    kiln = make_kiln()
    workflow_id = run_id
    if is_pipeline:
        target = kiln.pipelines.workflow_of(run_id)
        if target is None:
            raise click.ClickException(f"pipeline {run_id} has no workflow")
        workflow_id = target
    liveness = Liveness(kiln)  # says so when no worker or controller is alive to move it
    try:
        if not as_json:
            run = follow_progress(
                kiln, workflow_id, console, interval=interval, on_tick=liveness.check
            )
            raise SystemExit(exit_code(run["status"]))
        last = None
        while True:
            snap = snapshot(kiln, workflow_id)
            public = _public(snap)
            if public != last:
                click.echo(_dumps(public))
                last = public
            if _settled(snap):
                raise SystemExit(exit_code(snap["status"]))
            liveness.check()
            time.sleep(interval)
    except KeyboardInterrupt:
        err_console.print(f"stopped watching; workflow {workflow_id} is not affected")
        raise SystemExit(130) from None


# --- ops --------------------------------------------------------------------------------


@click.command()
@click.option("--status", type=click.Choice(["pending", "processing", "completed", "failed"]))
@click.option("--pipeline", "pipeline_id", type=int, help="Only operations on this pipeline.")
@click.option("--workflow", "workflow_id", type=int, help="Only operations on this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print {operations, total} as JSON.")
def ops(
    status: str | None, pipeline_id: int | None, workflow_id: int | None, limit: int, as_json: bool
) -> None:
    """List interactive-control operations (stop, resume, delete, clone, cancel, pause),
    newest first."""
    page, total = make_kiln().operations.list(
        status=status, pipeline_id=pipeline_id, workflow_id=workflow_id, limit=limit
    )
    page = [redact({**op, "request_data": op.get("request_data") or {}}) for op in page]
    if as_json:
        click.echo(_dumps({"operations": page, "total": total}, indent=2))
        return
    table = Table(title=f"operations · {len(page)} of {total}")
    for col in ("ic_id", "operation", "target", "status", "created", "processed", "error"):
        table.add_column(col)
    for op in page:
        target = (
            f"pipeline {op['pipeline_id']}" if op.get("pipeline_id") is not None
            else f"workflow {op['workflow_id']}" if op.get("workflow_id") is not None else ""
        )  # fmt: skip
        table.add_row(
            op["ic_id"],
            op["operation"],
            target,
            _styled(op["status"]),
            _when(op["created_at"]),
            _when(op.get("processed_at")),
            op.get("error") or "",
        )
    console.print(table)


# --- instances --------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print {instances, count} as JSON.")
def instances(as_json: bool) -> None:
    """List registered TaskInstances with their load and heartbeat age."""
    rows = redact(make_kiln().instances.all())
    if as_json:
        click.echo(_dumps({"instances": rows, "count": len(rows)}, indent=2))
        return
    table = Table(title=f"instances · {len(rows)}")
    for col in ("id", "name", "model_type", "status", "live", "load", "queue", "heartbeat", "url"):
        table.add_column(col)
    for r in rows:
        load = Table.grid(padding=(0, 1))
        load.add_row(
            _bar(r["kiln_tasks_running"], max(r["slots"], 1)),
            f"{r['kiln_tasks_running']}/{r['slots']}",
        )
        table.add_row(
            str(r["id"]),
            r["name"],
            r["model_type"],
            _styled(r["status"]),
            "yes" if r["live"] else "[red]no[/]",
            load,
            str(r["queue_size"]),
            _ago(dt.datetime.fromisoformat(r["heartbeat_at"]) if r["heartbeat_at"] else None),
            r["url"],
        )
    console.print(table)


# --- pipelines --------------------------------------------------------------------------


@click.command()
@click.option(
    "--status", type=click.Choice(["new", "ongoing", "stopped", "completed", "failed", "deleted"])
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print {pipelines, count} as JSON.")
def pipelines(status: str | None, limit: int, as_json: bool) -> None:
    """List pipelines with their shard progress, newest first."""
    rows = make_kiln().pipelines.list(status=status, limit=limit)
    rows = [redact({**p, "status": str(p["status"])}) for p in rows]
    if as_json:
        click.echo(_dumps({"pipelines": rows, "count": len(rows)}, indent=2))
        return
    table = Table(title=f"pipelines · {len(rows)}")
    for col in ("id", "name", "type", "status", "progress", "shards", "samples", "workflow"):
        table.add_column(col)
    for p in rows:
        table.add_row(
            str(p["id"]),
            p["name"],
            p["pipeline_type"],
            _styled(p["status"]),
            _bar(p["shards_completed"], p["num_shards"]),
            p["progress"],
            str(p["total_samples_processed"]),
            str(p.get("workflow_id") or ""),
        )
    console.print(table)


# --- scheduler --------------------------------------------------------------------------


@click.group()
def scheduler() -> None:
    """The scheduler: stats, the policy, and what it would dispatch next."""


def _stats_table(stats: dict[str, Any]) -> Table:
    table = Table(title=f"scheduler · policy {stats['policy']}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key in (
        "policy", "placement", "quantum_micros", "total_scheduled", "context_switches",
        "preemptions", "ready", "queued", "running", "active",
    ):  # fmt: skip
        table.add_row(key, str(stats.get(key, "")))
    table.add_row("available policies", ", ".join(stats.get("available_policies", [])))
    return table


@scheduler.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
def scheduler_stats(as_json: bool) -> None:
    """Counters (seed 001's shape), the policy, and queue figures."""
    data = make_kiln().scheduler.stats()
    if as_json:
        click.echo(_dumps(data, indent=2))
        return
    console.print(_stats_table(data))


@scheduler.command("policy")
@click.argument("name")
@click.option("--placement", help="Placement strategy for model_type tasks.")
@click.option("--quantum-micros", type=int, help="Round-robin quantum.")
@click.option("--json", "as_json", is_flag=True, help="Print {policy, previous_policy, ...}.")
def scheduler_policy(
    name: str, placement: str | None, quantum_micros: int | None, as_json: bool
) -> None:
    """Switch the queue-ordering policy (FIFO, RoundRobin, Priority, Fair,
    ShortestPredicted); controllers re-order everything queued on their next pass."""
    change = make_kiln().scheduler.set_policy(
        name, quantum_micros=quantum_micros, placement=placement
    )
    previous, stored = change.previous, change.current
    data = {
        "policy": stored.policy,
        "previous_policy": previous,
        "placement": stored.placement,
        "quantum_micros": stored.state.quantum_micros,
    }
    if as_json:
        click.echo(_dumps(data, indent=2))
        return
    console.print(
        f"scheduling policy [bold]{stored.policy}[/] (was {previous}), placement {stored.placement}"
    )


@scheduler.command("next")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print the dry run as JSON.")
def scheduler_next(limit: int, as_json: bool) -> None:
    """Dry run: the tasks the scheduler would dispatch next, in order, and why."""
    data = make_kiln().scheduler.schedule_next(limit=limit)
    if as_json:
        click.echo(_dumps(data, indent=2))
        return
    table = Table(title=f"next under {data['policy']} · {data['ready']} ready")
    for col in ("#", "task", "name", "workflow", "priority", "model_type", "reason"):
        table.add_column(col)
    for q in data["queue"]:
        table.add_row(
            str(q["position"]), str(q["task_id"]), q["name"], str(q["workflow_id"]),
            str(q["priority"]), q["model_type"] or "", q["reason"],
        )  # fmt: skip
    console.print(table)


COMMANDS = [watch, ops, instances, pipelines, scheduler]
