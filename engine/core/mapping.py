"""Map tasks: a task run once per item of an upstream result, decided when that result exists.

``{"name": "Agg", "handler": "m:agg", "map": "{{Split.result.chunks}}", "params": {"chunk":
"{{item}}"}}`` is a *map task*. It never runs a handler itself: once ``Split`` succeeded, the
controller expands it into one task per item (``Agg[0]``, ``Agg[1]``...), each with ``{{item}}``
and ``{{index}}`` in its params replaced by its item and its place in the list, and the map
task's result is their results in item order. Pure functions over plain data; the store's
``kiln.store.maps`` does the expansion.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.core.templating import REF, lookup

DEFAULT_MAX_MAP_ITEMS = 10_000  # KILN_MAX_MAP_ITEMS
# Reserved in task names: a mapped item is named "Name[i]".
ITEM_NAME_CHARS = frozenset("[]")
PLACEHOLDER = re.compile(r"\{\{\s*(?P<what>item|index)\s*\}\}")
# A placeholder or a result reference, matched in one pass (see item_params).
_TEMPLATE = re.compile(f"{PLACEHOLDER.pattern}|{REF.pattern}")


class MapError(Exception):
    """A map task cannot be expanded: its list is missing, not a list, or too long."""


def map_source(map_over: str) -> str | None:
    """The task whose result ``map_over`` names, or None unless ``map_over`` is exactly one
    ``{{Task.result...}}`` reference."""
    match = REF.fullmatch(map_over.strip())
    return match.group("task").strip() if match else None


def uses_placeholders(params: Any) -> bool:
    """Whether ``{{item}}`` or ``{{index}}`` appear anywhere in ``params``."""
    if isinstance(params, str):
        return PLACEHOLDER.search(params) is not None
    if isinstance(params, list):
        return any(uses_placeholders(v) for v in params)
    if isinstance(params, dict):
        return any(uses_placeholders(v) for v in params.values())
    return False


def item_name(map_name: str, index: int) -> str:
    return f"{map_name}[{index}]"


def check_items(value: Any, *, source: str, max_items: int) -> list[Any]:
    """``value`` (what the map's reference resolved to) as the list of items; raise
    :class:`MapError` unless it is a list of at most ``max_items``."""
    if not isinstance(value, list):
        raise MapError(f"{source} is {_json_type(value)}, not a list: a map needs a list")
    if len(value) > max_items:
        raise MapError(
            f"{source} has {len(value)} items; a map runs at most {max_items} (KILN_MAX_MAP_ITEMS)"
        )
    return value


def is_item_name(name: str) -> bool:
    """Whether ``name`` is a mapped item's (``Agg[3]``): ``[`` is reserved in task names."""
    return not ITEM_NAME_CHARS.isdisjoint(name)


def item_params(params: Any, item: Any, index: int, results: dict[str, Any] | None = None) -> Any:
    """``params`` for one item, final: ``{{item}}`` and ``{{index}}`` become the item and its
    place in the list, and ``{{Task.result...}}`` references the value in ``results`` (task
    name -> result; the map task's upstream tasks all succeeded before it was expanded). A
    string that is exactly one of them becomes the value with its JSON type; inside a longer
    string, its text (JSON for anything but a string). One pass over the template: text that
    an item or a result brings in is never read as a reference (an item ``"{{X.result}}"``
    stays that text), which is why an item's params are not resolved again when it is
    claimed. Raises :class:`~kiln.core.templating.ReferenceError_` for a missing result;
    with ``results`` None, references are left as they are."""

    def value(m: re.Match[str]) -> Any:
        if m.group("what") is not None:
            return item if m.group("what") == "item" else index
        return m.group(0) if results is None else lookup(m, results)

    if isinstance(params, str):
        whole = _TEMPLATE.fullmatch(params.strip())
        if whole:
            return value(whole)

        def text(m: re.Match[str]) -> str:
            v = value(m)
            return v if isinstance(v, str) else json.dumps(v)

        return _TEMPLATE.sub(text, params)
    if isinstance(params, list):
        return [item_params(v, item, index, results) for v in params]
    if isinstance(params, dict):
        return {k: item_params(v, item, index, results) for k, v in params.items()}
    return params


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object"
