"""Retry policies and backoff: exponential with jitter, as pure functions.

A task's ``retry`` policy (``{"max_attempts", "backoff_s", "max_backoff_s", "jitter", "on"}``)
is validated here; what it leaves out comes from the deployment (``KILN_RETRY_BASE_S``,
``KILN_RETRY_MAX_S``, equal jitter, every exception)."""

from __future__ import annotations

import random
import re
from typing import Any

from kiln.core.errors import InvalidDefinition

DEFAULT_JITTER = 0.5  # "equal jitter": never sooner than half the nominal backoff
MAX_BACKOFF_S = 7 * 24 * 3600.0
MAX_ON = 50  # exception names in one policy
RETRY_FIELDS = {"max_attempts", "backoff_s", "max_backoff_s", "jitter", "on"}
_EXCEPTION_NAME = re.compile(r"^(?:[A-Za-z_][\w.]*:)?[A-Za-z_][\w.]*$")


def backoff_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    jitter: float = DEFAULT_JITTER,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt`` (1-based).

    The cap doubles per attempt (``base_s``, ``2*base_s``, ...) up to ``max_s``; the wait is
    drawn uniformly from the top ``jitter`` fraction of the cap (0: exactly the cap; the
    default 0.5, "equal jitter", spreads retries of tasks that failed together but never
    retries sooner than half the nominal backoff).
    """
    cap = min(max_s, base_s * 2 ** min(max(0, attempt - 1), 64))
    return cap * (1 - jitter) + (rng or random).uniform(0, cap * jitter)


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidDefinition(f"{where} must be a number between {lo:g} and {hi:g}", field=where)
    return float(value)


def parse_retry_policy(raw: Any, where: str, *, max_attempts_limit: int) -> dict[str, Any]:
    """Validate a task's ``retry`` object; return it normalised (only the keys given).

    Raise :class:`InvalidDefinition` naming the field (``tasks[0].retry.jitter``)."""
    if not isinstance(raw, dict):
        raise InvalidDefinition(f"{where} must be an object", field=where)
    unknown = sorted(set(raw) - RETRY_FIELDS)
    if unknown:
        raise InvalidDefinition(
            f"{where}: unknown field {unknown[0]!r}", field=f"{where}.{unknown[0]}"
        )
    policy: dict[str, Any] = {}
    if "max_attempts" in raw:
        value, field = raw["max_attempts"], f"{where}.max_attempts"
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidDefinition(f"{field} must be an integer", field=field)
        policy["max_attempts"] = int(_number(value, field, 1, max_attempts_limit))
    for key in ("backoff_s", "max_backoff_s"):
        if key in raw:
            policy[key] = _number(raw[key], f"{where}.{key}", 0, MAX_BACKOFF_S)
    if policy.get("max_backoff_s", MAX_BACKOFF_S) < policy.get("backoff_s", 0):
        raise InvalidDefinition(
            f"{where}.max_backoff_s must be at least backoff_s", field=f"{where}.max_backoff_s"
        )
    if "jitter" in raw:
        policy["jitter"] = _number(raw["jitter"], f"{where}.jitter", 0, 1)
    if "on" in raw:
        on, field = raw["on"], f"{where}.on"
        if (
            not isinstance(on, list)
            or not 1 <= len(on) <= MAX_ON
            or not all(isinstance(n, str) and _EXCEPTION_NAME.match(n) for n in on)
            or max(map(len, on)) > 200
        ):
            raise InvalidDefinition(
                f"{field} must be a list of 1 to {MAX_ON} exception class names "
                "('module:ClassName' or 'ClassName')",
                field=field,
            )
        policy["on"] = list(on)
    return policy


def exception_name(cls: type) -> str:
    """``module:QualName``, the form a policy's ``on`` list names exceptions in."""
    return f"{cls.__module__}:{cls.__qualname__}"


def retries_on(exc: BaseException, on: list[str] | None) -> bool:
    """Whether ``exc`` is retryable under a policy's ``on`` list (``None``: every exception).

    A name matches the exception's class or any base class, as ``module:QualName`` or as the
    bare ``QualName`` (``ValueError``, ``builtins:ValueError``)."""
    if on is None:
        return True
    wanted = set(on)
    for cls in type(exc).__mro__:
        if exception_name(cls) in wanted or cls.__qualname__ in wanted:
            return True
    return False
