"""Rendering runs for people: rich tables and a live progress view, or JSON for scripts."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.db import aware
from engine.runtime import Kiln
from engine.states import WORKFLOW_TERMINAL

STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "upstream_failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
    "retrying": "magenta",
    "ready": "white",
    "pending": "dim",
    "paused": "yellow",
}


def _duration(t: dict[str, Any]) -> str:
    start, end = aware(t.get("started_at")), aware(t.get("finished_at"))
    if start is None:
        return ""
    if end is None:
        return "…"
    return f"{(end - start).total_seconds():.2f}s"


def _short(value: Any, width: int = 48) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def run_table(run: dict[str, Any]) -> Table:
    style = STATE_STYLE.get(run["status"], "")
    table = Table(title=f"workflow {run['id']} · {run['name']} · [{style}]{run['status']}[/]")
    for col in ("task", "state", "attempts", "duration", "progress", "result / error"):
        table.add_column(col)
    for t in run["tasks"]:
        state = t["status"]
        progress = f"{t['progress']:.0%}" if t.get("progress") is not None else ""
        if t.get("progress_message") and state == "running":
            progress += f" {t['progress_message']}"
        outcome = t["error"] if state != "succeeded" and t.get("error") else t.get("result")
        table.add_row(
            t["name"],
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            f"{t['attempts']}/{t['max_attempts']}",
            _duration(t),
            progress,
            "" if outcome is None else _short(outcome),
        )
    return table


def follow(kiln: Kiln, workflow_id: int, console: Console, *, interval: float = 0.2) -> dict:
    """Show the run live until it ends; return its final state."""
    run = kiln.workflow(workflow_id)
    with Live(run_table(run), console=console, refresh_per_second=8, transient=False) as live:
        while run["status"] not in WORKFLOW_TERMINAL:
            time.sleep(interval)
            run = kiln.workflow(workflow_id)
            live.update(run_table(run))
    return run


def as_json(run: dict[str, Any]) -> str:
    return json.dumps(run, default=str, indent=2)
