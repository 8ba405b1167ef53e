"""Worker pools: a task may name a queue (``queue`` in its definition), and ``kiln worker
--queues a,b`` consumes only those. A worker says which queues it consumes in its
``processes`` row (``info``), so a controller leases a named queue's tasks only while a live
worker consumes it; the others wait with a ``waiting_reason``. Tasks without a queue go to
the default queue (``KILN_QUEUE``), dispatched as before whether a worker is live or not."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from kiln.core.errors import InvalidDefinition

# A queue's name: it also names a broker queue and a Redis key (``kiln:direct:<queue>``).
QUEUE_NAME = re.compile(r"[a-z0-9_-]{1,64}")
EVERY_QUEUE = "*"  # the embedded runtime's workers serve every queue


def parse_queues(text: str) -> tuple[str, ...]:
    """``"a,b"`` as ``("a", "b")``; raise :class:`InvalidDefinition` on a bad name."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if not QUEUE_NAME.fullmatch(n)]
    if not names or bad:
        raise InvalidDefinition(
            f"queues must be a comma-separated list of names among a-z 0-9 _ - (got {text!r})"
        )
    return names


def worker_info(queues: Iterable[str] | None) -> dict[str, Any]:
    """What a worker records in its ``processes`` row: the queues it consumes (None: all)."""
    return {"queues": EVERY_QUEUE if queues is None else list(queues)}


def served_queues(infos: Iterable[Any], default: str) -> frozenset[str] | None:
    """The queues live workers (their ``info``) consume; None when one consumes them all. A
    worker that registered no queues consumes the default one."""
    served: set[str] = set()
    for info in infos:
        queues = info.get("queues") if isinstance(info, dict) else None
        if queues == EVERY_QUEUE:
            return None
        served.update(q for q in queues or [default] if isinstance(q, str))
    return frozenset(served)
