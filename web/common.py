"""Helpers the blueprints share: the app's Kiln handle, idempotency keys, rendering."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, request

from kiln.app.runtime import Kiln
from kiln.core.idempotency import IdempotencyKey
from kiln.core.redaction import redact
from kiln.web.auth import SECURITY
from kiln.web.errors import BadRequest
from kiln.web.schemas import unix

IDEMPOTENCY_HEADER = {
    "in": "header",
    "name": "Idempotency-Key",
    "required": False,
    # 1 to 200 characters, not all of them blank (the server strips the key)
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"},
    "description": "a retried request with the same key returns the same result; the same "
    "key with a different request to the same route is refused (422 idempotency_key_reused)",
}
MUTATING_DOC = {"security": SECURITY, "parameters": [IDEMPOTENCY_HEADER]}
_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")  # werkzeug's <int(max=9):id> -> {id}


def kiln() -> Kiln:
    return current_app.extensions["kiln"]


def idempotency_key() -> IdempotencyKey | None:
    """The request's Idempotency-Key, scoped to its route (``POST /workflows/{workflow_id}/
    cancel``) and bound to its path parameters and JSON body."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", field="Idempotency-Key")
    rule = request.url_rule.rule if request.url_rule else request.path
    scope = request.method + " " + _PARAM.sub(r"{\1}", rule)
    return IdempotencyKey.of(scope, key, path=request.view_args, body=request.get_json(silent=True))


def render_operation(row: dict[str, Any]) -> dict[str, Any]:
    """An operation as the API shows it: Unix-second timestamps, ``error`` "" unless it
    failed (as seed 004 shows), secrets (in ``request_data`` and anywhere) as ``***``."""
    return redact(
        {
            **row,
            "error": row.get("error") or "",
            "created_at": unix(row["created_at"]),
            "processed_at": unix(row.get("processed_at")),
            "request_data": row.get("request_data") or {},
        }
    )


def render_pipeline(p: dict[str, Any]) -> dict[str, Any]:
    """A pipeline as people see it: its configuration and shards with secrets as ``***``."""
    return redact(p)


def render_context(c: dict[str, Any]) -> dict[str, Any]:
    """A context as people see it: ``config`` secrets and source credentials as ``***``."""
    return redact(c)


def render_workflow(run: dict[str, Any]) -> dict[str, Any]:
    """A run (or its summary) as people see it: secrets in task params, results and errors
    as ``***``."""
    return redact(run)
