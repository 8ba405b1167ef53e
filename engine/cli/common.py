"""What every ``kiln`` command shares: the consoles, the one way to fail, and the process's
``Kiln`` handle built from the environment."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NoReturn

from kiln.app.runtime import Kiln
from kiln.core import audit
from kiln.core.config import Settings

if TYPE_CHECKING:
    from rich.console import Console

    console: Console
    err_console: Console  # a message stays one line, for grep


@functools.cache
def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    return Console(), Console(stderr=True, soft_wrap=True)


def __getattr__(name: str) -> Any:
    """``console`` and ``err_console``, made when first imported: `kiln worker` and `kiln
    controller` print nothing with them, and importing Rich would cost their start-up."""
    if name in ("console", "err_console"):
        return _consoles()[name == "err_console"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_kiln() -> Kiln:
    """A ``Kiln`` on the database the environment names (``KILN_DATABASE_URL``); what it
    changes is recorded as done by ``cli`` (a worker or controller it starts names itself)."""
    audit.set_process_actor("cli")
    return Kiln(Settings.from_env())


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: the caller's mistake)."""
    _consoles()[1].print(f"[red]error:[/] {message}")
    raise SystemExit(code)
