"""Running ``async def`` handlers: each call gets a fresh event loop (``asyncio.run``) on the
thread that would have run a sync handler.

Why a loop per task rather than one shared loop per worker: the handler then sits exactly
where a sync one does, so ``timeout_s`` (the thread in ``kiln.workers.timeouts``), the
worker's ``--threads`` limit, ``current_task()`` (a context variable, copied into the loop's
task) and the cancel flag all work unchanged; and a coroutine that blocks (a sync call by
mistake) holds up only its own task. A new loop costs well under a millisecond.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from kiln.core.errors import TaskCancelled
from kiln.core.task_context import Cancellation


def run_awaitable(awaitable: Awaitable[Any], cancellation: Cancellation) -> Any:
    """Await ``awaitable`` on a new event loop; cancel its coroutine when ``cancellation``
    is set, and raise :class:`TaskCancelled` (a plain exception, unlike
    ``asyncio.CancelledError``) for a coroutine that ended cancelled."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None

        def cancel() -> None:
            try:
                loop.call_soon_threadsafe(me.cancel)
            except RuntimeError:  # the loop is closed: the handler finished already
                pass

        cancellation.on_cancel(cancel)
        return await awaitable

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise TaskCancelled(
            f"task cancelled: {cancellation.reason or 'its coroutine was cancelled'}"
        ) from None
