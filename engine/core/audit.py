"""Who changes Kiln's rows, and why: the ``actor`` and ``reason`` of ``events`` rows.

A process names itself once (:func:`set_process_actor`: its process id, or ``cli``); code that
knows more names the actor or the reason for what it runs inside :func:`acting` (the web, per
request: ``api`` or ``api token <sha256 prefix>``). The store reads both when it opens a
transaction (``kiln.store.base.Store.txn``; PostgreSQL only); the database's triggers copy
them to the events they write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token

Scope = tuple[str | None, str | None]  # (actor, reason)

_process_actor: str | None = None
_scoped: ContextVar[Scope] = ContextVar("kiln_audit", default=(None, None))


def set_process_actor(actor: str | None) -> None:
    """Name this process in the events it causes (its process id, ``cli``)."""
    global _process_actor
    _process_actor = actor


def process_actor() -> str | None:
    return _process_actor


def scoped() -> tuple[str | None, str | None]:
    """``(actor, reason)`` named by the innermost :func:`acting`; ``(None, None)`` outside."""
    return _scoped.get()


@contextlib.contextmanager
def acting(actor: str | None = None, reason: str | None = None) -> Iterator[None]:
    """Transactions opened inside record ``actor`` and ``reason`` (None: the outer value)."""
    token = begin(actor, reason)
    try:
        yield
    finally:
        end(token)


def begin(actor: str | None = None, reason: str | None = None) -> Token[Scope]:
    """:func:`acting` for code that cannot hold a ``with`` (a web request's hooks): pass
    what this returns to :func:`end`."""
    outer_actor, outer_reason = _scoped.get()
    return _scoped.set((actor or outer_actor, reason or outer_reason))


def end(token: Token[Scope]) -> None:
    _scoped.reset(token)
