"""The tuning parameters a policy accepts: each one's type and range, declared next to the
policy (``Policy.PARAMS``) and checked before a policy is built, so a value that would make
ordering raise (a string, ``null``, ``inf``, a zero divisor) is refused when it is set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class InvalidPolicyParams(ValueError):
    """A policy's tuning parameters are of the wrong type or out of range."""

    def __init__(self, policy: str, field: str, problem: str) -> None:
        self.policy, self.field, self.problem = policy, field, problem
        super().__init__(f"{policy} params: {field} {problem}")


@dataclass(frozen=True)
class Param:
    """One tuning parameter: a finite number (an integer when ``integer``) from ``low`` to
    ``high`` inclusive, or ``null`` when ``nullable``."""

    low: float
    high: float
    integer: bool = False
    nullable: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} in [{self.low:g}, {self.high:g}]" + (" or null" if self.nullable else "")

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or ``None`` when it is."""
        if value is None and self.nullable:
            return None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.integer and not isinstance(value, int)):
            return f"must be {self.describe()}, got {_short(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.describe()}, got {value}"
        if not self.low <= value <= self.high:
            return f"must be {self.describe()}, got {_short(value)}"
        return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_params(policy: str, spec: Mapping[str, Param], params: Any) -> dict[str, Any]:
    """``params`` as a dict when every key is a parameter of ``spec`` with an acceptable
    value; raises :class:`InvalidPolicyParams` naming the first offending field otherwise."""
    if not isinstance(params, dict):
        raise InvalidPolicyParams(policy, "params", "must be an object")
    for key in sorted(params, key=str):
        if key not in spec:
            known = ", ".join(spec) or "none"
            raise InvalidPolicyParams(policy, str(key), f"is not a parameter (known: {known})")
        problem = spec[key].problem(params[key])
        if problem is not None:
            raise InvalidPolicyParams(policy, key, problem)
    return dict(params)
