"""Where a context's ``source`` may point: an http(s) URL, or a file under one of the
directories the deployment names (``KILN_SOURCE_DIRS``; none by default, so local paths are
refused). Checked when a context is created and again before a worker reads it."""

from __future__ import annotations

import os
from collections.abc import Iterable

from kiln.core.errors import InvalidDefinition

URL_SCHEMES = ("http", "https")


def local_path(source: str) -> str | None:
    """The file a source names (``/data/rows.jsonl`` or ``file:///data/rows.jsonl``), or
    None for an http(s) URL. Raises InvalidDefinition for any other scheme."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source
    if scheme.lower() in URL_SCHEMES:
        if not rest or rest.startswith("/"):
            raise InvalidDefinition(f"source {source!r} names no host", field="source")
        return None
    if scheme.lower() == "file":
        return rest
    raise InvalidDefinition(
        f"source {source!r}: only http(s) URLs and local paths are accepted", field="source"
    )


def check_source(source: str, dirs: Iterable[str]) -> str | None:
    """Raise InvalidDefinition unless ``source`` is an http(s) URL or an absolute path that
    resolves (symlinks and ``..`` followed) inside one of ``dirs``. Returns the resolved
    path, or None for a URL."""
    path = local_path(source)
    if path is None:
        return None
    roots = [os.path.realpath(d) for d in dirs if d]
    if not roots:
        raise InvalidDefinition(
            f"source {source!r}: local paths are refused unless the deployment lists the "
            "directories they may be in (KILN_SOURCE_DIRS); use an http(s) URL",
            field="source",
        )
    if not os.path.isabs(path):
        raise InvalidDefinition(f"source {source!r} must be an absolute path", field="source")
    resolved = os.path.realpath(path)
    if not any(os.path.commonpath([resolved, root]) == root for root in roots):
        raise InvalidDefinition(
            f"source {source!r} is outside the directories sources may be read from "
            "(KILN_SOURCE_DIRS)",
            field="source",
        )
    return resolved
