"""Tasks that wait for time or for the outside world, as Kiln builds every kind: a builtin
handler over :func:`~kiln.current_task` (``sleep_until``, ``wait_for_signal``), so they are
claimed, recorded and recovered like any task, and hold no worker while they wait.

* kind ``sleep``: ``{"name": "Cool", "sleep": "PT1H"}`` (an ISO 8601 duration, or seconds)
  or ``{"name": "Cool", "until": "2026-12-24T18:00:00Z"}``; its result is
  ``{"slept_until": "..."}``. A duration counts from when the task first runs.
* kind ``signal``: ``{"name": "Approve", "signal": "approve", "timeout": "PT24H",
  "on_timeout": "fail"}`` waits for ``POST /workflows/<id>/signals/approve``; its result is
  the signal's payload. ``on_timeout: {"continue": VALUE}`` makes VALUE the result instead
  of failing.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from kiln.core.clock import aware, utcnow
from kiln.core.errors import PermanentFailure, SignalTimeout
from kiln.core.task_context import current_task

SLEEP_HANDLER = "kiln.core.waits:sleep"
SIGNAL_HANDLER = "kiln.core.waits:signal"
MAX_WAIT_S = 10 * 365 * 86400.0

_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_UNIT_S = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def duration_s(value: Any) -> float:
    """Seconds in ``value``: a number of seconds, or an ISO 8601 duration with weeks, days,
    hours, minutes and seconds (``PT1H``, ``P1DT12H``, ``PT0.5S``). Years and months have no
    fixed length and are refused. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or an ISO 8601 duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip().upper())):
        if value.strip().upper() in ("P", "PT") or value.strip().upper().endswith("T"):
            raise ValueError(f"{value!r} is an empty ISO 8601 duration")
        seconds = sum(float(v) * _UNIT_S[k] for k, v in m.groupdict().items() if v)
    else:
        raise ValueError(
            f"{value!r} is not a duration: give seconds, or ISO 8601 like 'PT1H' or 'P1DT2H' "
            "(years and months have no fixed length)"
        )
    if not 0 <= seconds <= MAX_WAIT_S:
        raise ValueError(f"{value!r} is not a duration between 0 and {MAX_WAIT_S:g} s (10 years)")
    return seconds


def timestamp(value: Any) -> dt.datetime:
    """An ISO 8601 timestamp with a time zone (``2026-12-24T18:00:00Z``). Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError("a time is an ISO 8601 string with a time zone")
    parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (add Z or +01:00)")
    return parsed.astimezone(dt.UTC)


def sleep(seconds: float | None = None, until: str | None = None) -> dict[str, str]:
    ctx = current_task()
    state = ctx.state
    if not isinstance(state, dict) or "until" not in state:
        end = timestamp(until) if until else utcnow() + dt.timedelta(seconds=seconds or 0)
        state = {"until": end.isoformat()}
    end = aware(dt.datetime.fromisoformat(state["until"]))
    ctx.sleep_until(end, state=state)
    return {"slept_until": end.isoformat()}


def signal(
    signal: str,
    timeout_s: float | None = None,
    on_timeout: Any = "fail",
) -> Any:
    ctx = current_task()
    state = ctx.state
    if not isinstance(state, dict) or "deadline" not in state:
        deadline = utcnow() + dt.timedelta(seconds=timeout_s) if timeout_s is not None else None
        state = {"deadline": deadline.isoformat() if deadline else None}
    until = aware(dt.datetime.fromisoformat(state["deadline"])) if state["deadline"] else None
    try:
        return ctx.wait_for_signal(signal, until=until, state=state)
    except SignalTimeout as exc:
        if isinstance(on_timeout, dict) and "continue" in on_timeout:
            return on_timeout["continue"]
        raise PermanentFailure(f"{exc.message} (on_timeout: fail)") from None
