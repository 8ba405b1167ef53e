"""Helpers the blueprints share: the app's Kiln handle, idempotency keys, rendering."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from kiln.app.runtime import Kiln
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
    "description": "a retried request with the same key returns the same result",
}
MUTATING_DOC = {"security": SECURITY, "parameters": [IDEMPOTENCY_HEADER]}


def kiln() -> Kiln:
    return current_app.extensions["kiln"]


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > 200:
        raise BadRequest("Idempotency-Key must be 1 to 200 characters", field="Idempotency-Key")
    return key


def render_operation(row: dict[str, Any]) -> dict[str, Any]:
    """An operation as the API shows it: Unix-second timestamps, ``error`` "" unless it
    failed (as seed 004 shows), secrets in the request replaced by ``***``."""
    return {
        **row,
        "error": row.get("error") or "",
        "created_at": unix(row["created_at"]),
        "processed_at": unix(row.get("processed_at")),
        "request_data": redact(row.get("request_data") or {}),
        "result": redact(row.get("result")),
    }


def render_pipeline(p: dict[str, Any]) -> dict[str, Any]:
    return {
        **p,
        "model_config": redact(p.get("model_config")),
        "sampling_params": redact(p.get("sampling_params")),
        "client_config": redact(p.get("client_config")),
    }
