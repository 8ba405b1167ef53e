"""Handlers for the retry-policy tests, named by path (``tests.retry_handlers:flaky``)."""

from __future__ import annotations

from kiln.core.task_context import current_task


class Transient(ConnectionError):
    """A failure worth retrying."""


ERRORS: dict[str, type[Exception]] = {"transient": Transient, "value": ValueError}


def flaky(error: str, succeed_on: int = 1000, secret_url: str = "") -> dict:
    """Raises ``ERRORS[error]`` (two frames deep) on every attempt before ``succeed_on``."""
    attempt = current_task().attempt
    if attempt < succeed_on:
        _deeper(error, attempt, secret_url)
    return {"attempt": attempt}


def _deeper(error: str, attempt: int, secret_url: str) -> None:
    raise ERRORS[error](f"attempt {attempt} failed {secret_url}".strip())
