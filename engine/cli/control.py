"""What the acting commands share: recording an operation (cancel, pause, resume; a
pipeline's stop, resume, clone, delete) and waiting for a controller to apply it, and telling
the user when no worker or controller is alive to do the work."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from kiln.app.runtime import Kiln
from kiln.cli.common import console, err_console, fail
from kiln.core.errors import DatabaseUnavailable
from kiln.core.operations import UNFINISHED
from kiln.core.redaction import redact

# The thresholds of GET /health/detailed (kiln.web.health): controllers heartbeat every 2 s,
# workers every third of KILN_LEASE_S.
CONTROLLER_STALE_S = 10.0
CHECK_EVERY_S = 2.0


def worker_stale_s(kiln: Kiln) -> float:
    return max(10.0, kiln.settings.lease_s)


def missing_processes(kiln: Kiln) -> dict[str, str]:
    """``{"worker" | "controller": why it matters}`` for each kind no process of is alive,
    as ``/health/detailed`` sees it; empty with the in-process broker (the command runs
    both)."""
    if kiln.settings.embedded_broker:
        return {}
    out: dict[str, str] = {}
    stale = worker_stale_s(kiln)
    if not kiln.monitor.live_processes("worker", stale_after_s=stale):
        out["worker"] = (
            f"no live worker (none heartbeated within {stale:g}s): tasks wait until one "
            "starts (`kiln worker`)"
        )
    if not kiln.monitor.live_processes("controller", stale_after_s=CONTROLLER_STALE_S):
        out["controller"] = (
            f"no live controller (none heartbeated within {CONTROLLER_STALE_S:g}s): nothing "
            "is dispatched or applied until one starts (`kiln controller`)"
        )
    return out


class Liveness:
    """Checks at most every ``CHECK_EVERY_S`` that a worker and a controller are alive, and
    says so on stderr when that changes (at once on the first check)."""

    def __init__(self, kiln: Kiln) -> None:
        self.kiln = kiln
        self._said: set[str] = set()
        self._checked_at = -CHECK_EVERY_S

    def check(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY_S:
            return
        self._checked_at = now
        try:
            missing = missing_processes(self.kiln)
        except DatabaseUnavailable:
            return
        for kind, line in missing.items():
            if kind not in self._said:
                err_console.print(f"[yellow]warning:[/] {line}")
        for kind in sorted(self._said - set(missing)):
            err_console.print(f"a {kind} is live now")
        self._said = set(missing)


# The fields GET /dispatcher/operation-status shows (OperationSchema).
SHOWN = (
    "ic_id", "pipeline_id", "workflow_id", "operation", "status", "error", "created_at",
    "processed_at", "request_data", "result",
)  # fmt: skip


def operation_row(op: dict[str, Any]) -> dict[str, Any]:
    """An operation as ``--json`` prints it: the API's fields, secrets as ``***``."""
    shown = {**op, "error": op.get("error") or "", "request_data": op.get("request_data") or {}}
    return redact({k: shown.get(k) for k in SHOWN})


def request(
    kiln: Kiln,
    operation: str,
    data: dict[str, Any],
    *,
    workflow_id: int | None = None,
    pipeline_id: int | None = None,
    wait_s: float,
) -> dict[str, Any]:
    """Record ``operation`` as the HTTP API does, then wait up to ``wait_s`` for a controller
    to apply it; returns the operation as it is then. With the in-process broker there is no
    controller process, so this command applies it itself."""
    if pipeline_id is not None and operation != "clone":
        op, _ = kiln.operations.on_pipeline(operation, pipeline_id, data)
    else:
        op, _ = kiln.operations.create(
            operation, data, workflow_id=workflow_id, pipeline_id=pipeline_id
        )
    if kiln.settings.embedded_broker:
        kiln.operations.apply_pending(f"cli:{os.getpid()}", limit=100)
        return kiln.operations.get(op["ic_id"])
    if wait_s <= 0:
        return op
    op = kiln.operations.get(op["ic_id"])
    if op["status"] in UNFINISHED:
        missing = missing_processes(kiln)
        if "controller" in missing:
            err_console.print(f"[yellow]warning:[/] {missing['controller']}")
        op = kiln.operations.wait(op["ic_id"], wait_s)
    return op


def report(op: dict[str, Any], what: str, *, as_json: bool) -> None:
    """Print the operation (``--json``: as the API shows it) and exit: 0 completed, 1
    failed, 0 still pending (with how to follow it)."""
    if as_json:
        click.echo(json.dumps(operation_row(op), default=str, indent=2))
        raise SystemExit(1 if op["status"] == "failed" else 0)
    if op["status"] == "failed":
        fail(f"{what} failed: {op.get('error') or 'no reason given'}", 1)
    if op["status"] in UNFINISHED:
        console.print(
            f"{what}: {op['status']} (operation {op['ic_id']}); a controller applies it, "
            "`kiln ops` shows when"
        )
        return
    result = op.get("result") or {}
    made = f" → pipeline {result['pipeline_id']}" if result.get("pipeline_id") else ""
    console.print(f"{what}: {op['status']}{made}")
