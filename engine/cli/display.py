"""Rendering runs for people: rich tables and a live progress view, or JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from kiln.core.clock import aware
from kiln.core.redaction import redact

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
    run = redact(run)
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


def last_errors(run: dict[str, Any]) -> list[tuple[str, str]]:
    """``(task name, error)`` for each task that failed or is retrying: the last failed
    attempt's error, with the handler's traceback (redacted)."""
    shown = []
    for t in redact(run)["tasks"]:
        if t["status"] not in ("failed", "retrying"):
            continue
        errors = [a["error"] for a in t.get("attempt_history", []) if a.get("error")]
        if errors or t.get("error"):
            shown.append((t["name"], errors[-1] if errors else t["error"]))
    return shown


def as_json(run: dict[str, Any]) -> str:
    """The run as JSON, secrets in params and results shown as ``***``."""
    return json.dumps(redact(run), default=str, indent=2)
