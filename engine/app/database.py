"""What the sub-APIs of ``kiln.app`` need of :class:`~kiln.app.runtime.Kiln`, which builds
them and so cannot be imported by them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import sqlalchemy as sa

from kiln.core.config import Settings

T = TypeVar("T")


class Database(Protocol):
    """A Kiln handle: its settings, and one transaction (``txn``) or read per call."""

    settings: Settings

    @property
    def engine(self) -> sa.Engine: ...
    def txn(self, fn: Callable[[sa.Connection], T]) -> T: ...
    def read(self, fn: Callable[[sa.Connection], T]) -> T: ...
