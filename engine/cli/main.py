"""The ``kiln`` command line."""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click

from kiln.app.control import DatabaseError
from kiln.cli.common import console, fail, make_kiln
from kiln.core.config import Settings
from kiln.core.errors import InvalidDefinition, KilnError
from kiln.core.handlers import load_imports
from kiln.core.pools import parse_queues


class KilnGroup(click.Group):
    """Turn Kiln's own errors into a readable message and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KilnError as exc:
            fail(exc.message, 1 if exc.status_code >= 500 else 2)
        except DatabaseError as exc:
            fail(f"database error: {str(exc.orig).strip()}", 1)


@click.group(cls=KilnGroup)
def main() -> None:
    """Kiln: durable DAG workflows on a database-backed job queue.

    Configure with KILN_DATABASE_URL (default: SQLite file ./kiln.db) and KILN_BROKER_URL
    (default: in-process broker). See the README for everything else.
    """
    from kiln.app.logs import setup_logging

    try:
        setup_logging(click.get_current_context().invoked_subcommand or "cli")
    except ValueError as exc:  # a bad KILN_LOG_LEVEL / KILN_LOG_FORMAT
        fail(str(exc))
    load_imports()


@main.group()
def db() -> None:
    """Database schema commands."""


@main.group()
def token() -> None:
    """API tokens (see docs/security.md)."""


@token.command("hash")
@click.option("--scopes", default="", help="Print a KILN_API_TOKENS entry with these scopes, "
              "e.g. read,write.")  # fmt: skip
def token_hash(scopes: str) -> None:
    """Print the sha256 of the token read from stdin (one line), the form KILN_API_TOKENS
    names tokens by: `kiln token hash --scopes read < token.txt`."""
    from kiln.core.access import hash_token, parse_tokens

    value = sys.stdin.readline().strip()
    if not value:
        fail("no token on stdin")
    entry = hash_token(value)
    if scopes:
        entry += f":{scopes}"
        try:
            parse_tokens(entry)
        except ValueError as exc:
            fail(str(exc))
    click.echo(entry)


@db.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print {database, revision} as JSON.")
def db_upgrade(as_json: bool) -> None:
    """Migrate the database to the newest schema."""
    kiln = make_kiln()
    kiln.upgrade()
    if as_json:
        where = kiln.engine.url.render_as_string(hide_password=True)
        click.echo(json.dumps({"database": where, "revision": kiln.control.schema_revision()}))
        return
    console.print(
        f"database at {kiln.engine.url.render_as_string(hide_password=True)} is up to date"
    )


@main.command()
@click.option("--threads", default=8, show_default=True, help="Worker threads per process.")
@click.option("--processes", default=1, show_default=True, help="Worker processes to start.")
@click.option(
    "--queues",
    default=None,
    help="Comma-separated worker pools to consume (tasks' `queue`); default: the default "
    "queue (KILN_QUEUE) only.",
)
def worker(threads: int, processes: int, queues: str | None) -> None:
    """Run a worker: consume the broker and execute tasks."""
    settings = Settings.from_env()
    if settings.embedded_broker:
        fail(
            "`kiln worker` needs a shared broker: set KILN_BROKER_URL=redis://... "
            "(with the in-process default, `kiln run` and `kiln demo` run their own workers)"
        )
    try:
        pools = list(parse_queues(queues)) if queues is not None else [settings.queue_name]
    except InvalidDefinition as exc:
        fail(str(exc))
    if processes > 1:
        args = ["worker", "--threads", str(threads), "--queues", ",".join(pools)]
        _supervise([[sys.executable, "-m", "kiln.cli.main", *args]] * processes)
        return
    import dramatiq

    from kiln import transport
    from kiln.app.runtime import Kiln
    from kiln.workers.actors import build_actors

    broker = transport.current().broker
    build_actors(broker, Kiln(settings, pool_size=16, sender=transport.send_now), pools)
    stop = threading.Event()
    w = dramatiq.Worker(
        broker,
        queues=set(pools),
        worker_threads=threads,
        worker_timeout=max(1, settings.worker_poll_ms),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    w.start()
    logging.getLogger("kiln.worker").warning(
        "worker pid %d started with %d threads on queues %s", os.getpid(), threads, pools
    )
    stop.wait()
    w.stop(timeout=30_000)


def _supervise(commands: list[list[str]]) -> None:
    children = [subprocess.Popen(cmd) for cmd in commands]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    raise SystemExit(max(codes))


@main.command()
def controller() -> None:
    """Run the controller: recover lost work and dispatch ready tasks."""
    from kiln.workers.controller import Controller
    from kiln.workers.hooks import controller_hooks
    from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks

    kiln = make_kiln()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Controller(
        kiln,
        hooks=controller_hooks() + scheduling_hooks(kiln),
        order=scheduler_order(kiln),
    ).run(stop)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Serve the HTTP API (development server; use gunicorn in production, see Procfile)."""
    from werkzeug.serving import run_simple

    from kiln.web.app import create_app

    run_simple(host, port, create_app(), threaded=True, use_reloader=False)


def _load_definition(target: str) -> Any:
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


def _run_and_follow(kiln, definition: Any, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    from kiln.cli.display import as_json as run_json

    if kiln.settings.embedded_broker:
        kiln.upgrade()
    workflow_id = kiln.submit(definition)
    if kiln.settings.embedded_broker:
        from kiln.workers.embedded import EmbeddedRuntime
        from kiln.workers.hooks import controller_hooks
        from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks

        with EmbeddedRuntime(
            kiln, hooks=controller_hooks() + scheduling_hooks(kiln), order=scheduler_order(kiln)
        ):
            run = _follow(kiln, workflow_id, as_json)
    else:
        run = _follow(kiln, workflow_id, as_json)
    if as_json:
        click.echo(run_json(run))
    raise SystemExit(0 if run["status"] == "succeeded" else 1)


def _follow(kiln, workflow_id: int, as_json: bool):  # type: ignore[no-untyped-def]
    import time

    from kiln.core.states import WORKFLOW_TERMINAL

    if not as_json:
        from kiln.cli.ops import follow_progress

        return follow_progress(kiln, workflow_id, console)
    run = kiln.workflow(workflow_id)
    while run["status"] not in WORKFLOW_TERMINAL:
        time.sleep(0.1)
        run = kiln.workflow(workflow_id)
    return run


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the final run as JSON.")
def run(target: str, as_json: bool) -> None:
    """Submit a workflow (FILE.json or module:workflow) and follow it to the end.

    Exits 0 only if the run succeeded. With the in-process broker (no KILN_BROKER_URL) it
    runs its own worker and controller while following.
    """
    _run_and_follow(make_kiln(), _load_definition(target), as_json)


@main.command()
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option(
    "--traceback", "tracebacks", is_flag=True, help="Also print each failed task's last error."
)
def status(run_id: int, as_json: bool, tracebacks: bool) -> None:
    """Show a workflow run and its tasks."""
    from kiln.cli.display import as_json as run_json
    from kiln.cli.display import last_errors, run_table

    run = make_kiln().workflow(run_id)
    if as_json:
        click.echo(run_json(run))
        return
    console.print(run_table(run))
    for name, error in last_errors(run) if tracebacks else []:
        console.rule(f"{name}: last attempt's error", style="red")
        console.print(error, markup=False, highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the final run as JSON.")
def demo(as_json: bool) -> None:
    """Run the sample workflow on the embedded default (no servers needed)."""
    from dataclasses import replace

    from kiln.app.runtime import Kiln
    from kiln.workers.demo import demo_workflow

    settings = Settings.from_env()
    # A short backoff so the demo's deliberate first failure retries quickly.
    kiln = Kiln(replace(settings, retry_base_s=min(settings.retry_base_s, 0.3)))
    if not as_json:
        where = kiln.engine.url.render_as_string(hide_password=True)
        broker = settings.broker_url or "in-process broker"
        console.print(f"[bold]Kiln demo[/] · database {where} · {broker}")
    _run_and_follow(kiln, demo_workflow(), as_json)


def _instance_command() -> None:
    try:
        from kiln.taskinstance.server.app import instance_command
    except ImportError:
        return
    main.add_command(instance_command, "instance")


_instance_command()

from kiln.cli.ops import COMMANDS  # noqa: E402 - operator commands, in their own module

for _command in COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()
