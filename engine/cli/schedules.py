"""``kiln schedules`` (cron schedules), ``kiln rerun`` (rerun a failed run from its failure)
and ``kiln db prune`` (retention). Each prints a table or line for people, or one JSON
document with ``--json``."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from kiln.cli.common import console, fail, make_kiln
from kiln.cli.ops import _styled, _when
from kiln.cli.runs import load_definition
from kiln.core.schedules import CATCH_UP_CHOICES, OVERLAP_CHOICES, parse_age


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, indent=2)


def _print(schedule: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(_dumps(schedule))
        return
    state = "paused" if schedule["paused"] else "active"
    console.print(
        f"schedule {schedule['id']} [bold]{schedule['name']}[/] · {schedule['cron']} "
        f"({schedule['timezone']}) · {state} · overlap {schedule['overlap']} · catch_up "
        f"{schedule['catch_up']}",
        highlight=False,
    )
    for t in schedule["next_fire_times"]:
        console.print(f"  next: {_when(t)} UTC", highlight=False)
    for f in schedule.get("fires", []):
        run = f"run {f['workflow_id']}" if f["workflow_id"] else "no run"
        console.print(f"  fired {_when(f['fire_time'])} UTC: {f['outcome']}, {run}")


@click.group("schedules")
def schedules() -> None:
    """Cron schedules: each fire time submits the schedule's workflow once."""


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
def list_schedules(as_json: bool) -> None:
    """Every schedule with its next fire time."""
    rows = make_kiln().schedules.list()
    if as_json:
        click.echo(_dumps(rows))
        return
    table = Table("id", "name", "cron", "timezone", "state", "next fire (UTC)", "overlap",
                  "catch_up")  # fmt: skip
    for r in rows:
        nxt = _when(r["next_fire_times"][0]) if r["next_fire_times"] else ""
        state = _styled("paused") if r["paused"] else "active"
        table.add_row(str(r["id"]), r["name"], r["cron"], r["timezone"], state, nxt,
                      r["overlap"], r["catch_up"])  # fmt: skip
    console.print(table)


@schedules.command("show")
@click.argument("schedule_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
def show(schedule_id: int, as_json: bool) -> None:
    """A schedule, its next fire times and its latest fires."""
    _print(make_kiln().schedules.get(schedule_id), as_json)


@schedules.command("create")
@click.argument("name")
@click.argument("cron")
@click.argument("workflow")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option("--overlap", type=click.Choice(OVERLAP_CHOICES), default="skip", show_default=True)
@click.option("--catch-up", type=click.Choice(CATCH_UP_CHOICES), default="none",
              show_default=True)  # fmt: skip
@click.option("--retention-days", type=float, help="Prune its finished runs after this.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
def create(
    name: str,
    cron: str,
    workflow: str,
    timezone: str,
    overlap: str,
    catch_up: str,
    retention_days: float | None,
    paused: bool,
    as_json: bool,
) -> None:
    """Create schedule NAME firing at CRON (5 fields, or 6 with seconds first) the
    WORKFLOW (FILE.json or module:workflow)."""
    definition = load_definition(workflow)
    if hasattr(definition, "to_definition"):
        definition = definition.to_definition()
    data = {"name": name, "cron": cron, "timezone": timezone, "workflow": definition,
            "overlap": overlap, "catch_up": catch_up, "paused": paused}  # fmt: skip
    if retention_days is not None:
        data["retention_days"] = retention_days
    _print(make_kiln().schedules.create(data), as_json)


@schedules.command("pause")
@click.argument("schedule_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
def pause(schedule_id: int, as_json: bool) -> None:
    """Stop firing."""
    _print(make_kiln().schedules.pause(schedule_id), as_json)


@schedules.command("resume")
@click.argument("schedule_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
def resume(schedule_id: int, as_json: bool) -> None:
    """Fire again from the next fire time after now."""
    _print(make_kiln().schedules.resume(schedule_id), as_json)


@schedules.command("delete")
@click.argument("schedule_id", type=int)
def delete(schedule_id: int) -> None:
    """Delete a schedule (the runs it started stay)."""
    make_kiln().schedules.delete(schedule_id)
    console.print(f"schedule {schedule_id} deleted")


@click.command()
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print {id, rerun_of} as JSON.")
def rerun(run_id: int, as_json: bool) -> None:
    """Rerun a failed or cancelled run from its failure: a new run that reuses the succeeded
    tasks' results and runs the failed ones and what depends on them; `kiln watch ID`
    follows it."""
    new_id, _ = make_kiln().reruns.rerun(run_id)
    if as_json:
        click.echo(json.dumps({"id": new_id, "rerun_of": run_id}))
        return
    console.print(f"workflow {new_id} submitted (rerun of {run_id}); follow it with "
                  f"`kiln watch {new_id}`")  # fmt: skip


@click.command("prune")
@click.option("--older-than", help="Finished runs older than this (30d, 12h, 90m, 45s); "
              "default: KILN_RETENTION_DAYS and each schedule's retention_days.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def prune(older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete finished runs (succeeded, failed, cancelled) with their tasks, attempts and
    events, in batches; a run that is not finished is never removed."""
    try:
        age = parse_age(older_than) if older_than is not None else None
    except ValueError as exc:
        fail(str(exc))
    kiln = make_kiln()
    if age is None and not kiln.settings.retention_days and not _has_overrides(kiln):
        fail("nothing to prune by: give --older-than, or set KILN_RETENTION_DAYS")
    if dry_run:
        counts = kiln.retention.preview(age)
        counts = {k: counts[k] for k in ("runs", "tasks", "attempts", "events")}
    else:
        counts = kiln.retention.prune(age)
    if as_json:
        click.echo(json.dumps({**counts, "dry_run": dry_run}))
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {counts['runs']} runs, {counts['tasks']} tasks, "
                  f"{counts['attempts']} attempts, {counts['events']} events")  # fmt: skip


def _has_overrides(kiln: Any) -> bool:
    return any(s["retention_days"] for s in kiln.schedules.list())


COMMANDS = [schedules, rerun]
DB_COMMANDS = [prune]
