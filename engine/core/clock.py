"""Kiln's time: UTC everywhere, as aware datetimes."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar, overload

T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@overload
def aware(value: dt.datetime) -> dt.datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; Kiln stores UTC everywhere, so say so."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def poll_until(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout_s: float, every_s: float
) -> T:
    """``fetch()`` every ``every_s`` seconds until ``done`` holds of its value or ``timeout_s``
    has passed; the last value fetched."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        left = deadline - time.monotonic()
        if done(value) or left <= 0:
            return value
        time.sleep(min(every_s, left))
