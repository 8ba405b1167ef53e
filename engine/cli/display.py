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
    "waiting": "cyan dim",
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


def _items_after_their_map(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tasks in id order, each map task followed by its items (``Agg[0]``, ``Agg[1]``...)."""
    items: dict[int, list[dict[str, Any]]] = {}
    for t in tasks:
        if t.get("mapped_from") is not None:
            items.setdefault(t["mapped_from"], []).append(t)
    ordered: list[dict[str, Any]] = []
    for t in tasks:
        if t.get("mapped_from") is None:
            ordered.append(t)
            ordered += sorted(items.pop(t["id"], []), key=lambda i: i.get("map_index") or 0)
    return ordered + [i for rest in items.values() for i in rest]


def run_table(run: dict[str, Any]) -> Table:
    run = redact(run)
    style = STATE_STYLE.get(run["status"], "")
    title = f"workflow {run['id']} · {run['name']} · [{style}]{run['status']}[/]"
    if run.get("parent_workflow_id"):
        title += f" · child of run {run['parent_workflow_id']}"
    children = run.get("children") or []
    caption = (
        f"{len(children)} child run(s): "
        + ", ".join(
            f"{c['id']} [{STATE_STYLE.get(c['status'], '')}]{c['status']}[/]" for c in children[:20]
        )
        + (" …" if len(children) > 20 else "")
    )
    table = Table(title=title, caption=caption if children else None)
    for col in ("task", "state", "attempts", "duration", "progress", "result / error"):
        table.add_column(col)
    for t in _items_after_their_map(run["tasks"]):
        state = t["status"]
        progress = f"{t['progress']:.0%}" if t.get("progress") is not None else ""
        if t.get("progress_message") and state == "running":
            progress += f" {t['progress_message']}"
        outcome = t["error"] if state != "succeeded" and t.get("error") else t.get("result")
        if state == "waiting":
            outcome = t.get("waiting_reason")
        table.add_row(
            t["name"],
            f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            "map"
            if t.get("map_over")
            else f"{t['attempts'] - (t.get('resumes') or 0)}/{t['max_attempts']}",
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
