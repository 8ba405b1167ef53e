"""``kiln signal RUN NAME --json '{...}'``: send a signal to a run, as
``POST /workflows/<id>/signals/<name>`` does (through the application API)."""

from __future__ import annotations

import json

import click

from kiln.cli.common import console, fail, make_kiln


@click.command("signal")
@click.argument("run_id", type=int)
@click.argument("name")
@click.option("--json", "payload", default="null", show_default=True, help="The payload, as JSON.")
@click.option("--key", help="An idempotency key: sending again with it sends nothing new.")
def signal(run_id: int, name: str, payload: str, key: str | None) -> None:
    """Send signal NAME to run RUN_ID; the task waiting for it (kind signal) takes the
    payload as its result. A signal sent before that task is reached is kept until then."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--json is not valid JSON: {exc}")
    sent = make_kiln().signal(run_id, name, value, key=key)
    if sent["duplicate"]:
        console.print(f"signal {name!r} was sent to run {run_id} before with key {sent['key']!r}")
    elif sent["woke"]:
        console.print(f"signal {name!r} delivered to run {run_id}")
    else:
        console.print(f"signal {name!r} kept for run {run_id} (no task waits for it yet)")


COMMANDS = [signal]
