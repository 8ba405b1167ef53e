"""``{{Task Name.result.field.sub}}`` references inside task parameters.

Pure functions over plain JSON data. A string that is exactly one reference is replaced by the
referenced value with its JSON type; a reference inside a longer string is replaced by the
value's text (JSON for non-strings). References are found and replaced at any depth of nested
lists and objects.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.core.errors import KilnError

REF = re.compile(r"\{\{\s*(?P<task>[^{}]+?)\.result(?P<path>(?:\.[^.{}\s]+)*)\s*\}\}")


class ReferenceError_(KilnError):
    """A {{...}} reference cannot be resolved."""


def find_references(params: Any) -> set[str]:
    """Names of every task referenced anywhere in ``params``."""
    found: set[str] = set()
    for text in _strings(params):
        found.update(m.group("task").strip() for m in REF.finditer(text))
    return found


def resolve(params: Any, results: dict[str, Any]) -> Any:
    """``params`` with every reference replaced from ``results`` (task name -> result)."""
    if isinstance(params, str):
        return _resolve_string(params, results)
    if isinstance(params, list):
        return [resolve(v, results) for v in params]
    if isinstance(params, dict):
        return {k: resolve(v, results) for k, v in params.items()}
    return params


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def _resolve_string(text: str, results: dict[str, Any]) -> Any:
    whole = REF.fullmatch(text.strip())
    if whole:
        return lookup(whole, results)

    def substitute(m: re.Match[str]) -> str:
        value = lookup(m, results)
        return value if isinstance(value, str) else json.dumps(value)

    return REF.sub(substitute, text)


def lookup(match: re.Match[str], results: dict[str, Any]) -> Any:
    """The value a matched reference (of :data:`REF`) names in ``results``."""
    task = match.group("task").strip()
    if task not in results:
        raise ReferenceError_(f"{match.group(0)}: task {task!r} has no result")
    value = results[task]
    walked = [task, "result"]
    for key in filter(None, match.group("path").split(".")):
        walked.append(key)
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif (
            isinstance(value, list)
            and key.lstrip("-").isdigit()
            and -len(value) <= int(key) < len(value)
        ):
            value = value[int(key)]
        else:
            raise ReferenceError_(f"{match.group(0)}: {'.'.join(walked)} does not exist")
    return value
