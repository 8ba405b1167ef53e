"""How large and how deep what a client sends may be: JSON nesting, numbers, task and shard
counts. Pure; nothing here recurses, so a hostile document cannot exhaust the stack, and every
check is linear in the size of its input."""

from __future__ import annotations

import math
import re
from itertools import accumulate
from typing import Any

from kiln.core.errors import InvalidValue, LimitExceeded

DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_WORKFLOW_TASKS = 10_000
DEFAULT_MAX_CONTEXT_SHARDS = 10_000
# The numbers both databases store exactly (BIGINT, SQLite's INTEGER).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

# A JSON string, unrolled so a long one is one linear match.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
# Only numbers that may be out of range: 19+ integer digits, or an exponent. The look-behind
# makes a match start where the number starts, not inside its fraction or exponent.
_SUSPECT_NUMBER = re.compile(
    rb"(?<![\w.+-])-?(?:\d{19,}(?:\.\d+)?(?:[eE][+-]?\d+)?|\d+(?:\.\d+)?[eE][+-]?\d+)"
)
# A cheap first look: most bodies hold no number that needs the full pattern.
_MAYBE_SUSPECT = re.compile(rb"[0-9]{19}|[0-9][eE]")
# Python's parser accepts these; JSON and the databases do not.
_CONSTANT = re.compile(rb"(?<![\w.])-?(?:NaN|Infinity)(?!\w)")


def check_json_text(raw: bytes, *, max_depth: int) -> None:
    """Check a JSON document before it is parsed. Raises :class:`LimitExceeded` when it nests
    deeper than ``max_depth``, :class:`InvalidValue` when it holds an integer outside the
    64-bit range or a number that is not finite. Text that is not JSON is left to the parser."""
    skeleton = _STRING.sub(b'""', raw)
    brackets = skeleton.translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise _too_deep(max_depth)
    if b"NaN" in skeleton or b"Infinity" in skeleton:
        constant = _CONSTANT.search(skeleton)
        if constant:
            raise _not_finite(constant.group().decode())
    if _MAYBE_SUSPECT.search(skeleton):
        for match in _SUSPECT_NUMBER.finditer(skeleton):
            _check_number_text(match.group())


def _check_number_text(text: bytes) -> None:
    if any(c in text for c in b".eE"):
        if math.isinf(float(text)):
            raise _not_finite(_abbreviate(text.decode()))
    # 20 characters hold every 64-bit integer; longer is out of range without converting.
    elif len(text) > 20 or not INT_MIN <= int(text) <= INT_MAX:
        raise _out_of_range(_abbreviate(text.decode()))


def check_json_value(value: Any, *, max_depth: int, where: str = "the value") -> None:
    """The same limits for data already in Python (what :meth:`Kiln.submit` is given):
    nesting at most ``max_depth``, integers in the 64-bit range, finite floats."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > max_depth:
                raise _too_deep(max_depth, where)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise _out_of_range(_abbreviate(str(item)) if item.bit_length() < 10_000 else "")
        elif isinstance(item, float) and not math.isfinite(item):
            raise _not_finite(str(item))


def check_count(what: str, count: int, limit: int, setting: str) -> None:
    """Raise :class:`LimitExceeded` when ``count`` items of ``what`` exceed ``limit``."""
    if count > limit:
        raise LimitExceeded(
            f"at most {limit} {what} are allowed ({setting}); got {count}",
            field=what,
            limit=limit,
        )


def _too_deep(max_depth: int, where: str = "the JSON body") -> LimitExceeded:
    return LimitExceeded(
        f"{where} nests deeper than {max_depth} levels (KILN_MAX_JSON_DEPTH)", limit=max_depth
    )


def _out_of_range(text: str) -> InvalidValue:
    shown = f" {text}" if text else ""
    return InvalidValue(f"the integer{shown} is outside the 64-bit range", value=text)


def _not_finite(text: str) -> InvalidValue:
    return InvalidValue(f"the number {text} is not finite", value=text)


def _abbreviate(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:12]}...{text[-12:]} ({len(text)} characters)"
