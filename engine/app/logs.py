"""Logging for every Kiln process: one JSON object per line (or a readable line for local use)
carrying the ids a log line is about.

* ``KILN_LOG_LEVEL`` — ``DEBUG``, ``INFO``, ``WARNING`` (default), ``ERROR``.
* ``KILN_LOG_FORMAT`` — ``json`` (default) or ``text``; when unset, ``text`` if stderr is a
  terminal, ``json`` otherwise (processes under a supervisor, in a container, in tests).

Each JSON line has ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``process`` (``kind:host:pid``) and, when known, the ids involved: ``workflow_id``,
``task_id``, ``attempt``, ``operation_id``, ``pipeline_id``, ``instance_id``,
``process_id``. Ids come from three places, later ones winning:

1. :func:`set_process_fields` — fields of the whole process (a worker's registered id);
2. the task a handler runs for (``kiln.core.task_context``), so a handler's own ``logging`` calls
   carry its workflow, task and attempt without doing anything;
3. :func:`log_context` (a context manager over a contextvar) and ``extra={...}`` on the call.

Any other ``extra`` field is written too, as JSON (``str()`` for what JSON cannot hold); an
exception is written as ``exception`` (the formatted traceback) — logs are for operators, the
API never shows tracebacks.

Secrets never reach a line: :class:`RedactFilter` passes the message, its arguments, extra
fields and tracebacks through :mod:`kiln.core.redaction` (``api_key=***``,
``https://user:***@host``), as the API does with what it shows.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from kiln.core.execution import Outcome, RecordReport
from kiln.core.redaction import REDACTED, is_secret_key, redact, redact_text

ID_FIELDS = (
    "workflow_id",
    "task_id",
    "attempt",
    "operation_id",
    "pipeline_id",
    "instance_id",
    "process_id",
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kiln_log_context", default=None
)
_process_fields: dict[str, Any] = {}
HANDLER_NAME = "kiln"


def set_process_fields(**fields: Any) -> None:
    """Fields every line of this process carries from now on (``None`` removes one)."""
    for key, value in fields.items():
        if value is None:
            _process_fields.pop(key, None)
        else:
            _process_fields[key] = value


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Within the block (this thread or task only), log lines carry ``ids``."""
    token = _context.set(
        {**(_context.get() or {}), **{k: v for k, v in ids.items() if v is not None}}
    )
    try:
        yield
    finally:
        _context.reset(token)


def _task_fields() -> dict[str, Any]:
    from kiln.core.task_context import _current

    ctx = _current.get()
    if ctx is None:
        return {}
    return {"workflow_id": ctx.workflow_id, "task_id": ctx.task_id, "attempt": ctx.attempt}


def push_context(**ids: Any) -> contextvars.Token:
    """Like :func:`log_context` for code that cannot use a ``with`` block (middleware hooks);
    undo with :func:`pop_context` in the same thread."""
    return _context.set(
        {**(_context.get() or {}), **{k: v for k, v in ids.items() if v is not None}}
    )


def pop_context(token: contextvars.Token) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the process, task and context ids on each record (``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for source in (_process_fields, _task_fields(), _context.get() or {}):
            for key, value in source.items():
                if key not in record.__dict__:
                    setattr(record, key, value)
        return True


class RedactFilter(logging.Filter):
    """Replaces the secrets in a record (its message and arguments, extra fields, traceback)
    with ``***`` before any formatter sees it."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):
            record.args = redact(dict(args))
        elif args:
            record.args = tuple(redact(a) if isinstance(a, dict | list) else a for a in args)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it
            return True
        record.msg, record.args = redact_text(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = REDACTED if is_secret_key(key) else redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self._plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [workflow_id=1 task_id=2]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{k}={record.__dict__[k]}" for k in ID_FIELDS if record.__dict__.get(k) is not None
        )
        if not ids:
            return line
        first, nl, rest = line.partition("\n")
        return f"{first} [{ids}]{nl}{rest}"


def _format_name(stream: TextIO) -> str:
    name = os.environ.get("KILN_LOG_FORMAT", "").strip().lower()
    if name in ("json", "text"):
        return name
    if name:
        raise ValueError(f"KILN_LOG_FORMAT must be json or text, got {name!r}")
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


def setup_logging(kind: str = "cli", *, stream: TextIO | None = None) -> logging.Handler:
    """Install Kiln's handler on the root logger (replacing a previous one of ours) with the
    level and format from the environment; return it."""
    stream = stream or sys.stderr
    level = os.environ.get("KILN_LOG_LEVEL", "WARNING").strip().upper() or "WARNING"
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"KILN_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    process = f"{kind}:{socket.gethostname()}:{os.getpid()}"
    handler.setFormatter(
        JsonFormatter(process) if _format_name(stream) == "json" else TextFormatter()
    )
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def setup_logging_if_unconfigured(kind: str) -> None:
    """For hosts that did not configure logging (gunicorn leaves the root logger bare)."""
    if not logging.getLogger().handlers:
        setup_logging(kind)


def log_outcomes(outcomes: Iterable[Outcome], report: RecordReport) -> None:
    """One line per failed attempt the database took: a WARNING with its error when the
    task will be retried, an ERROR when the task failed for good. Outcomes refused as stale
    (the run was cancelled, the lease passed on) are expected races and stay quiet."""
    log = logging.getLogger("kiln.worker")
    applied = set(report.applied)
    for o in outcomes:
        if o.ok or o.task.id not in applied:
            continue
        t = o.task
        with log_context(workflow_id=t.workflow_id, task_id=t.id, attempt=t.try_):
            if o.suspension is not None:  # not a failure: it waits
                log.debug("task %s (%r) is %s", t.id, t.name, o.error)
            elif o.retryable and t.try_ < t.max_attempts:
                log.warning(
                    "task %s (%r) attempt %d of %d failed, will retry: %s",
                    t.id, t.name, t.try_, t.max_attempts, o.error,
                )  # fmt: skip
            else:
                log.error(
                    "task %s (%r) failed on attempt %d of %d: %s",
                    t.id, t.name, t.try_, t.max_attempts, o.error,
                )  # fmt: skip
