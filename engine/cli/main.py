"""The ``kiln`` command line."""

from __future__ import annotations

import gc

if __name__ == "__main__":  # run as a program (`python -m kiln.cli.main worker`, ...)
    # Start-up imports much and frees little: the cyclic collector would only slow it down.
    # ``started`` turns it back on, with what start-up built frozen out of its passes.
    gc.disable()

import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import click

from kiln.app.control import OUTAGES, DatabaseError
from kiln.cli import common
from kiln.cli.common import fail, make_kiln
from kiln.core.config import Settings
from kiln.core.errors import InvalidDefinition, KilnError
from kiln.core.handlers import load_imports
from kiln.core.pools import parse_queues

# What stops a worker or the controller (forwarded to the children of `kiln worker --processes`).
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def started() -> None:
    """Start-up is over: what it built lives as long as the process, so it leaves the cyclic
    collector's passes (a full pass over it paused a busy worker for 80 ms), which resume."""
    gc.freeze()
    gc.enable()


class LazyCommands(click.Group):
    """A group whose commands from their own modules (:func:`add_commands`) are added when one
    is looked up: `kiln worker` and `kiln controller` start without them, or Rich."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            add_commands()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        add_commands()
        return super().list_commands(ctx)


class KilnGroup(LazyCommands):
    """Turn Kiln's own errors into a readable message and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KilnError as exc:
            fail(exc.message, 1 if exc.status_code >= 500 else 2)
        except DatabaseError as exc:
            reason = (str(exc.orig).strip().splitlines() or ["unknown"])[0]
            if reason.startswith("relation ") or reason.startswith("no such table"):
                reason += " (is the database migrated? `kiln db upgrade` does it)"
            fail(f"database error: {reason}", 1)


@click.group(cls=KilnGroup)
def main() -> None:
    """Kiln: durable DAG workflows on a database-backed job queue.

    Configure with KILN_DATABASE_URL (default: SQLite file ./kiln.db) and KILN_BROKER_URL
    (default: in-process broker). See the README for everything else.
    """
    from kiln.app.logs import setup_logging

    command = click.get_current_context().invoked_subcommand
    if command not in ("worker", "controller"):  # those call it once they have started
        started()
    try:
        setup_logging(command or "cli")
    except ValueError as exc:  # a bad KILN_LOG_LEVEL / KILN_LOG_FORMAT
        fail(str(exc))
    try:
        load_imports()
    except ImportError as exc:  # a KILN_IMPORTS module that is not there: one line, no traceback
        fail(str(exc))


@main.group(cls=LazyCommands)
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
    common.console.print(
        f"database at {kiln.engine.url.render_as_string(hide_password=True)} is up to date"
    )


@main.command()
@click.option("--threads", default=8, show_default=True, help="Worker threads per process.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    help="Worker processes, forked once this one has imported what they run.",
)
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
        _preload_worker(settings)
        _prefork(processes, lambda: _serve_worker(settings, pools, threads))
        return
    _serve_worker(settings, pools, threads)


def _serve_worker(settings: Settings, pools: list[str], threads: int) -> None:
    """One worker process: its own Kiln (pool), broker and Dramatiq worker, until SIGTERM."""
    import dramatiq

    from kiln import transport
    from kiln.app.runtime import Kiln
    from kiln.workers.actors import build_actors

    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    # A forked worker starts with them blocked (``_prefork``): a stop sent meanwhile lands now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    kiln = Kiln(settings, pool_size=16, sender=transport.send_now)
    if not _wait_for_schema(kiln, "worker", stop):
        return
    broker = transport.current().broker
    build_actors(broker, kiln, pools)
    w = dramatiq.Worker(
        broker,
        queues=set(pools),
        worker_threads=threads,
        worker_timeout=max(1, settings.worker_poll_ms),
    )
    w.start()
    started()
    logging.getLogger("kiln.worker").warning(
        "worker pid %d started with %d threads on queues %s", os.getpid(), threads, pools
    )
    stop.wait()
    w.stop(timeout=30_000)


def _preload_worker(settings: Settings) -> None:
    """Import what a worker process runs with, once, before ``_prefork`` shares it with the
    children: importing builds nothing (no pool, client or thread), so forking stays safe."""
    import dramatiq  # noqa: F401
    from dramatiq.brokers.redis import RedisBroker  # noqa: F401

    from kiln import transport  # noqa: F401
    from kiln.app.preload import import_driver
    from kiln.app.runtime import Kiln  # noqa: F401
    from kiln.workers.actors import build_actors  # noqa: F401

    import_driver(settings.database_url)


def _wait_for_schema(kiln: Any, kind: str, stop: threading.Event | None = None) -> bool:
    """Wait until the database is migrated (``kiln db upgrade``, which the Procfile's web
    process runs first), so a formation started at once on a fresh database comes up instead
    of failing; False if ``stop`` was set meanwhile."""
    import time

    said = False
    while stop is None or not stop.is_set():
        try:
            if kiln.control.schema_is_current():
                if said:
                    logging.getLogger(f"kiln.{kind}").warning("database schema is up to date")
                return True
            why = "its schema is not at the newest revision: waiting for `kiln db upgrade`"
        except OUTAGES as exc:
            why = f"it is unavailable ({str(exc).splitlines()[0]})"
        if not said:
            started()  # waiting, maybe for long: collect as usual meanwhile
            logging.getLogger(f"kiln.{kind}").warning("%s waits for the database: %s", kind, why)
            said = True
        if stop is None:
            time.sleep(0.5)
        else:
            stop.wait(0.5)
    return False


def _prefork(processes: int, serve: Callable[[], None]) -> None:
    """Fork ``processes`` children that each run ``serve`` (and exit with it), and supervise
    them: SIGTERM and SIGINT are forwarded, and this process exits with the worst child's
    code once all have exited. What this process imported is shared with the children
    (copy-on-write, frozen out of the collector's passes), so none of them imports it again."""
    log = logging.getLogger("kiln.worker")
    if threading.active_count() > 1:  # a KILN_IMPORTS module started one: it is not forked
        log.warning("forking workers while %d threads run", threading.active_count())
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    # Blocked until each side has its handlers: the parent's forwarding, the child's stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    children: list[int] = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            _in_forked_worker(serve)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # exited already; reaped below
                pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    started()
    log.info("worker pid %d supervises worker pids %s", os.getpid(), children)
    codes = []
    for pid in children:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        codes.append(128 - code if code < 0 else code)  # killed by a signal: as a shell says
    raise SystemExit(max(codes))


def _in_forked_worker(serve: Callable[[], None]) -> NoReturn:
    """A forked child: its log lines name its own pid, then it serves and exits the usual
    way (``serve`` unblocks the stop signals once it handles them)."""
    from kiln.app.logs import setup_logging

    setup_logging("worker")
    serve()
    raise SystemExit(0)


@main.command()
def controller() -> None:
    """Run the controller: recover lost work and dispatch ready tasks."""
    from kiln.workers.controller import Controller
    from kiln.workers.hooks import controller_hooks
    from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks

    kiln = make_kiln()
    stop = threading.Event()
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    if not _wait_for_schema(kiln, "controller", stop):
        return
    controller = Controller(
        kiln, hooks=controller_hooks() + scheduling_hooks(kiln), order=scheduler_order(kiln)
    )
    started()
    controller.run(stop)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    default=lambda: int(os.environ.get("PORT") or 5000),
    show_default="$PORT, else 5000",
    type=int,
)
def web(host: str, port: int) -> None:
    """Serve the HTTP API (development server; use gunicorn in production, see Procfile).
    It listens where the Procfile's web process does: $PORT, else 5000."""
    from werkzeug.serving import run_simple

    from kiln.web.app import create_app

    run_simple(host, port, create_app(), threaded=True, use_reloader=False)


def _run_and_follow(kiln, definition: Any, as_json: bool, after_submit=None) -> None:  # type: ignore[no-untyped-def]
    from kiln.cli.display import as_json as run_json

    if kiln.settings.embedded_broker:
        kiln.upgrade()
    workflow_id = kiln.submit(definition)
    common.err_console.print(
        f"workflow {workflow_id} submitted · following it (Ctrl-C stops following)"
    )
    if after_submit is not None:
        after_submit(workflow_id)
    try:
        if kiln.settings.embedded_broker:
            from kiln.workers.embedded import EmbeddedRuntime
            from kiln.workers.hooks import controller_hooks
            from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks

            with EmbeddedRuntime(
                kiln, hooks=controller_hooks() + scheduling_hooks(kiln), order=scheduler_order(kiln)
            ):
                run = _follow(kiln, workflow_id, as_json)
        else:
            from kiln.cli.control import Liveness

            run = _follow(kiln, workflow_id, as_json, Liveness(kiln).check)
    except KeyboardInterrupt:
        if kiln.settings.embedded_broker:
            common.err_console.print(
                f"interrupted: workflow {workflow_id} stopped with this command (the in-process "
                "broker ran it here); what it finished is kept in the database"
            )
        else:
            common.err_console.print(
                f"interrupted: workflow {workflow_id} continues on the workers; follow it with "
                f"`kiln watch {workflow_id}`, stop it with `kiln cancel {workflow_id}`"
            )
        raise SystemExit(130) from None
    if as_json:
        click.echo(run_json(run))
    raise SystemExit(0 if run["status"] == "succeeded" else 1)


def _follow(kiln, workflow_id: int, as_json: bool, on_tick=None):  # type: ignore[no-untyped-def]
    import time

    from kiln.core.states import WORKFLOW_TERMINAL

    if not as_json:
        from kiln.cli.ops import follow_progress

        return follow_progress(kiln, workflow_id, common.console, on_tick=on_tick)
    run = kiln.run(workflow_id)
    while run["status"] not in WORKFLOW_TERMINAL:
        if on_tick is not None:
            on_tick()
        time.sleep(0.1)
        run = kiln.run(workflow_id)
    return kiln.workflow(workflow_id)


@main.command()
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print the final run as JSON.")
def run(target: str, as_json: bool) -> None:
    """Submit a workflow (FILE.json or module:workflow) and follow it to the end.

    Exits 0 only if the run succeeded. With the in-process broker (no KILN_BROKER_URL) it
    runs its own worker and controller while following.
    """
    from kiln.cli.runs import load_definition

    _run_and_follow(make_kiln(), load_definition(target), as_json)


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
    common.console.print(run_table(run))
    for name, error in last_errors(run) if tracebacks else []:
        common.console.rule(f"{name}: last attempt's error", style="red")
        common.console.print(error, markup=False, highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the final run as JSON.")
def demo(as_json: bool) -> None:
    """Run the sample workflow on the embedded default (no servers needed)."""
    from dataclasses import replace

    from kiln.app.runtime import Kiln
    from kiln.workers.demo import APPROVAL, demo_workflow

    settings = Settings.from_env()
    # A short backoff so the demo's deliberate first failure retries quickly.
    kiln = Kiln(replace(settings, retry_base_s=min(settings.retry_base_s, 0.3)))
    if not as_json:
        where = kiln.engine.url.render_as_string(hide_password=True)
        broker = settings.broker_url or "in-process broker"
        common.console.print(f"[bold]Kiln demo[/] · database {where} · {broker}")

    def approve(workflow_id: int) -> None:
        # Sent before the run reaches its Approve task: kept, and delivered when it does.
        kiln.signal(workflow_id, *APPROVAL, key="kiln-demo")
        common.err_console.print(f"sent signal {APPROVAL[0]!r} to workflow {workflow_id}")

    _run_and_follow(kiln, demo_workflow(), as_json, after_submit=approve)


class _LazyInstanceCommand(click.Command):
    """``kiln instance``, importing the TaskInstance server (and Flask) only when it runs:
    ``kiln worker`` and ``kiln controller`` start without them."""

    def __init__(self) -> None:
        super().__init__(
            "instance",
            short_help="Run a simulated TaskInstance (kiln instance --help).",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,  # --help goes to the real command
        )

    def invoke(self, ctx: click.Context) -> Any:
        try:
            from kiln.taskinstance.server.app import instance_command
        except ImportError as exc:
            raise click.ClickException(f"the TaskInstance server cannot start: {exc}") from exc
        return instance_command.main(
            args=ctx.args, prog_name=ctx.command_path, standalone_mode=False
        )


main.add_command(_LazyInstanceCommand())


@functools.cache
def add_commands() -> None:
    """The commands defined in their own modules (they print with Rich tables)."""
    from kiln.cli import ops, pipeline, runs, schedules, signals

    for command in (
        *runs.COMMANDS, *ops.COMMANDS, *pipeline.COMMANDS, *schedules.COMMANDS, *signals.COMMANDS
    ):  # fmt: skip
        main.add_command(command)
    db.add_command(schedules.prune)


if __name__ == "__main__":
    main()
