"""Task handlers: functions registered with :func:`task`, or named by import path.

A handler is runnable only if it is registered (its name, or the import path of a registered
function), or if its import path is in a module the deployment allows: those listed in
``KILN_IMPORTS`` or ``KILN_HANDLER_MODULES`` (a name allows the module and its submodules),
and Kiln's own :data:`BUILTIN_MODULES`. Anything else, ``subprocess:getoutput`` say, is
refused before any import: a request never makes a process import a module.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, overload

from kiln.core.errors import HandlerNotAllowed, UnknownHandler

Handler = Callable[..., Any]
_registry: dict[str, Handler] = {}
_by_path: dict[str, Handler] = {}  # the import path of each registered function
# Modules shipped in the kiln package whose functions are handlers.
BUILTIN_MODULES = (
    "kiln.workers.demo",
    "kiln.workers.bench_handlers",
    "kiln.core.workflow_task",
    "kiln.core.waits",
)


@overload
def task(fn: Handler) -> Handler: ...
@overload
def task(*, name: str | None = None) -> Callable[[Handler], Handler]: ...


def task(fn: Handler | None = None, *, name: str | None = None) -> Any:
    """Register ``fn`` as a task handler under ``name`` (default: the function's name).

    A handler receives the task's resolved params as keyword arguments (or as one positional
    argument when params is not an object) and returns a JSON-serialisable result. It may be
    an ``async def`` function; a generator (sync or async) or a non-callable is refused here.
    """

    def register(f: Handler) -> Handler:
        problem = unrunnable(f)
        if problem:
            raise TypeError(f"cannot register {f!r} as a task handler: {problem}")
        key = name or f.__name__
        existing = _registry.get(key)
        if existing is not None and existing is not f and _path(existing) != _path(f):
            raise ValueError(f"handler name {key!r} is already registered to {_path(existing)}")
        _registry[key] = f
        _by_path[_path(f)] = f
        f.kiln_handler_name = key  # type: ignore[attr-defined]
        return f

    return register(fn) if fn is not None else register


def register(name: str, fn: Handler, *, aliases: tuple[str, ...] = ()) -> None:
    """Register a built-in handler under its stable ``name``, and under ``aliases`` (names
    that rows written by older releases still hold). Registering again replaces it."""
    for key in (name, *aliases):
        _registry[key] = fn
    _by_path[_path(fn)] = fn


def unrunnable(f: object) -> str | None:
    """Why Kiln cannot run ``f`` as a handler, or None: it runs plain and ``async def``
    functions (any callable), and stores what they return, which a generator never is."""
    if not callable(f):
        return "it is not callable"
    if inspect.isasyncgenfunction(f):
        return "it is an async generator function (return a list instead of yielding)"
    if inspect.isgeneratorfunction(f):
        return "it is a generator function (return a list instead of yielding)"
    return None


def _path(f: Handler) -> str:
    return f"{f.__module__}:{f.__qualname__}"


def handler_name(f: Handler | str) -> str:
    """The name a definition should use for ``f``: its registered name or import path."""
    if isinstance(f, str):
        return f
    return getattr(f, "kiln_handler_name", None) or _path(f)


def import_from_cwd() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` and gunicorn do, so
    every Kiln process finds a user's modules next to where it was started (the ``kiln``
    console script alone would look only beside itself)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_imports() -> None:
    """Import the modules listed in ``KILN_IMPORTS`` (comma-separated) so their handlers
    register; web, controller and worker processes all call this at start, and find them
    from the working directory (:func:`import_from_cwd`) or ``sys.path``. A module that
    cannot be found raises ``ModuleNotFoundError`` whose message is one line saying where
    Kiln looked."""
    import_from_cwd()
    for module in filter(None, (m.strip() for m in os.environ.get("KILN_IMPORTS", "").split(","))):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                # The module exists; something it imports does not.
                raise ModuleNotFoundError(
                    f"KILN_IMPORTS names {module!r}, which cannot be imported: {exc}",
                    name=exc.name,
                ) from exc
            raise ModuleNotFoundError(
                f"KILN_IMPORTS names {module!r}, but no module {exc.name!r} is in the working "
                f"directory ({os.getcwd()}) or on PYTHONPATH / sys.path",
                name=exc.name,
            ) from None


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    """``module`` is one of ``allowed`` (or :data:`BUILTIN_MODULES`), or inside one."""
    return any(
        module == m or module.startswith(m + ".")
        for m in (*BUILTIN_MODULES, *(a.strip() for a in allowed))
        if m
    )


def check_handler(name: str, allowed: Iterable[str]) -> None:
    """Raise unless ``name`` is runnable (see the module docstring) given the ``allowed``
    modules: :class:`UnknownHandler` for a name that is neither registered nor a path,
    :class:`HandlerNotAllowed` for a path outside the allowed modules. Imports nothing: a
    path into an allowed module is checked further only when that module is loaded already
    (the ``KILN_IMPORTS`` modules are), so a typo there is caught here too."""
    if name in _registry or name in _by_path:
        return
    allowed = tuple(allowed)
    if ":" not in name:
        raise UnknownHandler(
            f"handler {name!r} is not registered (register it with @kiln.task in a module "
            "listed in KILN_IMPORTS, or name it as 'package.module:function' in a module "
            "listed in KILN_IMPORTS or KILN_HANDLER_MODULES)",
            handler=name,
        )
    module_name, _, attr = name.partition(":")
    if not module_allowed(module_name, allowed):
        raise HandlerNotAllowed(
            f"handler {name!r} is not allowed: module {module_name!r} is not listed in "
            f"KILN_IMPORTS or KILN_HANDLER_MODULES; add {module_name!r} to KILN_IMPORTS "
            "(every Kiln process imports it at start) or to KILN_HANDLER_MODULES",
            handler=name,
        )
    module = sys.modules.get(module_name)
    if module is not None and getattr(module.__spec__, "_initializing", False):
        # Another thread is still running the module's body, so its functions may not exist
        # yet: importing it again waits for that import to finish.
        module = importlib.import_module(module_name)
    if module is not None:
        _attribute(module, name, attr, allowed)


def check_handlers(names: Iterable[str], allowed: Iterable[str]) -> None:
    """:func:`check_handler` for each distinct one of ``names``."""
    allowed = tuple(allowed)
    for name in dict.fromkeys(names):  # in order, each once
        check_handler(name, allowed)


def _lookup(module: Any, attr: str) -> Any:
    """What ``module`` holds under the dotted ``attr``, or None."""
    target: Any = module
    for part in attr.split("."):
        # Dunders lead out of the module (__globals__, __builtins__): never a handler.
        target = None if part.startswith("__") else getattr(target, part, None)
        if target is None:
            return None
    return target


def _attribute(module: Any, name: str, attr: str, allowed: Iterable[str]) -> Handler:
    target = _lookup(module, attr)
    if target is None:
        raise UnknownHandler(
            f"handler {name!r}: module {module.__name__!r} has no attribute {attr!r}",
            handler=name,
        )
    problem = unrunnable(target)
    if problem:
        raise UnknownHandler(f"handler {name!r} cannot run: {problem}", handler=name)
    # An allowed module's namespace also holds what it imported (``subprocess.run``):
    # only functions defined in an allowed module count.
    defined_in = getattr(target, "__module__", None)
    if not isinstance(defined_in, str) or not module_allowed(defined_in, allowed):
        raise HandlerNotAllowed(
            f"handler {name!r} is not allowed: it is defined in {defined_in!r}, not in "
            f"module {module.__name__!r}",
            handler=name,
        )
    return target


# Path handlers already resolved, by (name, allowed modules): (module, attribute, function).
# A worker resolves the same few names for every task, and the checks cost ~20 us each.
_resolved: dict[tuple[str, tuple[str, ...]], tuple[Any, str, Handler]] = {}
RESOLVED_MAX = 4096


def resolve_handler(name: str, allowed: Iterable[str]) -> Handler:
    """The function for a runnable ``name`` (:func:`check_handler`), importing its module
    if it is an allowed one not loaded yet."""
    registered = _registry.get(name) or _by_path.get(name)
    if registered is not None:
        return registered
    allowed = tuple(allowed)
    module_name, _, attr = name.partition(":")
    hit = _resolved.get((name, allowed))
    if hit is not None and sys.modules.get(module_name) is hit[0] and _lookup(*hit[:2]) is hit[2]:
        return hit[2]  # still what the loaded module holds under that name
    check_handler(name, allowed)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownHandler(
            f"handler {name!r}: cannot import module {module_name!r} ({exc})", handler=name
        ) from exc
    fn = _attribute(module, name, attr, allowed)
    if len(_resolved) >= RESOLVED_MAX:
        _resolved.clear()
    _resolved[(name, allowed)] = (module, attr, fn)
    return fn


def resolve_definition(ref: str, allowed: Iterable[str]) -> Any:
    """The workflow definition ``"package.module:attribute"`` names (a ``Workflow``, a
    definition dict, or a function returning one), in an allowed module, as for handlers."""
    module_name, _, attr = ref.partition(":")
    if not module_allowed(module_name, allowed):
        raise HandlerNotAllowed(
            f"workflow {ref!r} is not allowed: module {module_name!r} is not listed in "
            "KILN_IMPORTS or KILN_HANDLER_MODULES",
            handler=ref,
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownHandler(
            f"workflow {ref!r}: cannot import module {module_name!r} ({exc})", handler=ref
        ) from exc
    for part in attr.split("."):
        target = None if part.startswith("__") else getattr(target, part, None)
        if target is None:
            raise UnknownHandler(
                f"workflow {ref!r}: module {module_name!r} has no attribute {attr!r}",
                handler=ref,
            )
    return target() if callable(target) and not hasattr(target, "to_definition") else target
