"""Task handlers the tests submit. Workers import them via KILN_IMPORTS=tests.handlers or by
their import path, exactly as a user's own handlers would be."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from kiln.core.handlers import task
from kiln.core.task_context import current_task


@task(name="noop")
def noop(**_: object) -> None:
    return None


@task(name="echo")
def echo(**params: object) -> dict:
    return dict(params)


@task(name="add")
def add(a: float, b: float) -> float:
    return a + b


@task(name="sleep")
def sleep(seconds: float, value: object = None) -> object:
    """Sleeps ``seconds``, or until the attempt is cancelled, as a well-behaved handler does
    (a worker shutting down then waits for nothing)."""
    end = time.monotonic() + seconds
    ctx = current_task()
    while not ctx.cancelled and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
    return value


@task(name="sleep_ignoring_cancel")
def sleep_ignoring_cancel(seconds: float, value: object = None) -> object:
    """Sleeps ``seconds`` whatever happens: a handler that never looks at cancellation."""
    time.sleep(seconds)
    return value


@task(name="fail_always")
def fail_always(message: str = "boom") -> None:
    raise RuntimeError(message)


@task(name="fail_until")
def fail_until(succeed_on: int) -> dict:
    """Fails on every attempt before ``succeed_on``."""
    attempt = current_task().attempt
    if attempt < succeed_on:
        raise RuntimeError(f"failing attempt {attempt}")
    return {"attempt": attempt}


@task(name="kill_worker_once")
def kill_worker_once(marker: str, seconds: float = 0.5) -> dict:
    """SIGKILLs its own worker process on the first attempt (after ``marker`` is created so
    the test can see the task running), succeeds on the next."""
    if current_task().attempt == 1:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(seconds)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": current_task().attempt, "pid": os.getpid()}


@task(name="kill_worker_always")
def kill_worker_always() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="progress")
def progress(steps: int = 4, delay: float = 0.2) -> str:
    for i in range(steps):
        current_task().report_progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(delay)
    return "done"


# --- async handlers, and handlers that watch for cancellation ----------------------------
# What a handler saw, by the ``key`` its test passes (the embedded runtime runs handlers in
# the test's own process): "started", then "cancelled" or "TaskCancelled" when it stopped.
SEEN: dict[str, list[str]] = {}


def _seen(key: str, what: str) -> None:
    SEEN.setdefault(key, []).append(what)


@task(name="async_sleep")
async def async_sleep(seconds: float, value: object = None) -> object:
    await asyncio.sleep(seconds)
    return value


@task(name="async_fail_until")
async def async_fail_until(succeed_on: int) -> dict:
    """Fails on every attempt before ``succeed_on``."""
    await asyncio.sleep(0)
    attempt = current_task().attempt
    if attempt < succeed_on:
        raise RuntimeError(f"failing attempt {attempt}")
    return {"attempt": attempt}


@task(name="async_progress")
async def async_progress(steps: int = 4, delay: float = 0.2) -> str:
    for i in range(steps):
        current_task().report_progress((i + 1) / steps, f"step {i + 1}")
        await asyncio.sleep(delay)
    return "done"


@task(name="report_until_cancelled")
def report_until_cancelled(key: str) -> str:
    """Reports progress until that raises :class:`kiln.TaskCancelled` (never on its own)."""
    _seen(key, "started")
    try:
        while True:
            current_task().report_progress(0.5, "working")
            time.sleep(0.02)
    except Exception as exc:
        _seen(key, type(exc).__name__)
        raise


@task(name="poll_cancelled")
def poll_cancelled(key: str) -> str:
    """Loops until ``current_task().cancelled``, then returns (a result refused as stale)."""
    _seen(key, "started")
    while not current_task().cancelled:
        time.sleep(0.02)
    _seen(key, "cancelled")
    return "stopped"


@task(name="async_report_until_cancelled")
async def async_report_until_cancelled(key: str) -> str:
    """Awaits forever; records the coroutine's cancellation."""
    _seen(key, "started")
    try:
        while True:
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        _seen(key, "cancelled" if current_task().cancelled else "CancelledError")
        raise


@task(name="async_poll_cancelled")
async def async_poll_cancelled(key: str) -> str:
    """Awaits until ``current_task().cancelled``; shielded, so it sees the flag itself."""
    _seen(key, "started")
    try:
        while not current_task().cancelled:
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        pass
    _seen(key, "cancelled" if current_task().cancelled else "CancelledError")
    return "stopped"


def not_registered(x: int) -> int:
    """Called by import path ``tests.handlers:not_registered``."""
    return x * 2


def tag_rows(rows: list, model_config: dict, shard_index: int) -> list:
    """A python pipeline's shard function (named by import path in model_config.handler)."""
    time.sleep(model_config.get("delay_s", 0))
    return [f"{shard_index}:{row}" for row in rows]
