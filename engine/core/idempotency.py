"""Idempotency keys, scoped per route and bound to the request they were first used with.

A client's key means "this request, once": a retry with the same key and the same request
gets the original result back; the same key with a different request on the same route is a
client bug, refused with :class:`~kiln.core.errors.IdempotencyKeyReused` (422), as Stripe
does; the same key on another route is another key.

The stores keep ``scope + " " + key`` in the tables' unique ``idempotency_key`` column (no
scope contains a space followed by more of a scope, so the pair is unambiguous) and the
fingerprint beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kiln.core.errors import IdempotencyKeyReused

SUBMIT_SCOPE = "POST /workflows"


def fingerprint(scope: str, path: dict[str, Any] | None, body: Any) -> str:
    """The sha256 (hex) of the canonical JSON of the route, its path parameters and the body:
    key order and whitespace do not matter, anything else does."""
    canonical = json.dumps(
        {"route": scope, "path": path or {}, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class IdempotencyKey:
    scope: str  # the route, e.g. "POST /workflows/{workflow_id}/cancel"
    key: str  # as the client sent it
    fingerprint: str

    @classmethod
    def of(
        cls, scope: str, key: str, *, path: dict[str, Any] | None = None, body: Any = None
    ) -> IdempotencyKey:
        return cls(scope, key, fingerprint(scope, path, body))

    @property
    def stored(self) -> str:
        """The value of the unique ``idempotency_key`` column."""
        return f"{self.scope} {self.key}"


def scoped(
    key: str | IdempotencyKey | None,
    scope: str,
    *,
    path: dict[str, Any] | None = None,
    body: Any = None,
) -> IdempotencyKey | None:
    """``key`` as given, or a plain string key (Python callers) scoped to ``scope``."""
    if key is None or isinstance(key, IdempotencyKey):
        return key
    return IdempotencyKey.of(scope, key, path=path, body=body)


def check_replay(key: IdempotencyKey, stored_fingerprint: str | None) -> None:
    """Raise IdempotencyKeyReused unless the stored request is the one ``key`` names now.
    Rows from before fingerprints were kept (``None``) match any request."""
    if stored_fingerprint is not None and stored_fingerprint != key.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key.key!r} was already used with a different request to "
            f"{key.scope}; use a new key for a new request",
            key=key.key,
            route=key.scope,
        )
