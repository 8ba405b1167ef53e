"""What every ``kiln`` command shares: the consoles, the one way to fail, and the process's
``Kiln`` handle built from the environment."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console

from kiln.app.runtime import Kiln
from kiln.core import audit
from kiln.core.config import Settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a message stays one line, for grep


def make_kiln() -> Kiln:
    """A ``Kiln`` on the database the environment names (``KILN_DATABASE_URL``); what it
    changes is recorded as done by ``cli`` (a worker or controller it starts names itself)."""
    audit.set_process_actor("cli")
    return Kiln(Settings.from_env())


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: the caller's mistake)."""
    err_console.print(f"[red]error:[/] {message}")
    raise SystemExit(code)
