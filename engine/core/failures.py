"""How a handler's failure is written down: a one-line summary for the task and the whole
traceback, bounded in size, for the attempt."""

from __future__ import annotations

import traceback

MAX_TRACEBACK_CHARS = 64 * 1024


def clip(text: str, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker:
    the outermost frames say where the handler was called, the last ones where it broke."""
    if len(text) <= limit:
        return text
    marker = f"\n... [{len(text) - limit} characters left out] ...\n"
    keep = max(0, limit - len(marker))
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]


def summary(exc: BaseException) -> str:
    """``Type: message (at file:line)``, the line that fails a task."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def full_traceback(exc: BaseException) -> str:
    """The whole traceback, chained causes included, clipped to ``MAX_TRACEBACK_CHARS``."""
    return clip("".join(traceback.format_exception(exc)).rstrip("\n"))
