"""Handlers used by bench/ (importable by workers as ``kiln.workers.bench_handlers:noop``)."""

import time


def noop(**_: object) -> None:
    return None


def stamp(**_: object) -> dict[str, float]:
    """A no-op that reports when its body started (``time.time()``, the clock the submitter
    reads too), so a benchmark measures submit -> handler start as the peer scripts do."""
    return {"started": time.time()}
