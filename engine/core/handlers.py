"""Task handlers: functions registered with :func:`task`, or named by import path."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, overload

from kiln.core.errors import UnknownHandler

Handler = Callable[..., Any]
_registry: dict[str, Handler] = {}


@overload
def task(fn: Handler) -> Handler: ...
@overload
def task(*, name: str | None = None) -> Callable[[Handler], Handler]: ...


def task(fn: Handler | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` as a task handler under ``name`` (default: the function's name).

    A handler receives the task's resolved params as keyword arguments (or as one positional
    argument when params is not an object) and returns a JSON-serialisable result.
    """

    def register(f: Handler) -> Handler:
        key = name or f.__name__
        existing = _registry.get(key)
        if existing is not None and existing is not f and _path(existing) != _path(f):
            raise ValueError(f"handler name {key!r} is already registered to {_path(existing)}")
        _registry[key] = f
        f.kiln_handler_name = key  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def register(name: str, fn: Handler, *, aliases: tuple[str, ...] = ()) -> None:
    """Register a built-in handler under its stable ``name``, and under ``aliases`` (names
    that rows written by older releases still hold). Registering again replaces it."""
    for key in (name, *aliases):
        _registry[key] = fn


def _path(f: Handler) -> str:
    return f"{f.__module__}:{f.__qualname__}"


def handler_name(f: Handler | str) -> str:
    """The name a definition should use for ``f``: its registered name or import path."""
    if isinstance(f, str):
        return f
    return getattr(f, "kiln_handler_name", None) or _path(f)


def load_imports() -> None:
    """Import the modules listed in ``KILN_IMPORTS`` (comma-separated) so their handlers
    register; web, controller and worker processes all call this at start."""
    for module in filter(None, (m.strip() for m in os.environ.get("KILN_IMPORTS", "").split(","))):
        importlib.import_module(module)


def resolve_handler(name: str) -> Handler:
    """The function for a registered name or a ``package.module:function`` path."""
    if name in _registry:
        return _registry[name]
    if ":" not in name:
        raise UnknownHandler(
            f"handler {name!r} is not registered (register it with @engine.task and list its "
            "module in KILN_IMPORTS, or name it as 'package.module:function')",
            handler=name,
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownHandler(
            f"handler {name!r}: cannot import module {module_name!r} ({exc})", handler=name
        ) from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise UnknownHandler(
                f"handler {name!r}: module {module_name!r} has no attribute {attr!r}",
                handler=name,
            )
    if not callable(target):
        raise UnknownHandler(f"handler {name!r} is not callable", handler=name)
    return target
