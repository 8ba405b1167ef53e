"""Periodic work the controller runs on every pass besides recovery and dispatch
(operations, instance liveness, ...), collected in one place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def controller_hooks() -> list[Callable[[Any], Any]]:
    return []
