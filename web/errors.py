"""One error shape for every error: ``{"error": code, "message": text, "details": {...}}``.

* request validation (marshmallow via flask-smorest): **400** ``missing_field`` when the only
  problems are required fields that are missing (seed 004's contract), otherwise **422**
  ``validation_error``; the message names the first field, ``details.fields`` lists all;
* Kiln's own errors (:class:`~kiln.core.errors.KilnError`): their ``status_code`` and ``code``;
* werkzeug's HTTP errors (404 unknown URL, 405, 413 body too large, 400 bad JSON ...);
* a value the database refuses (a NUL character, a number out of range): 422
  ``invalid_value`` (the store raises :class:`~kiln.core.errors.InvalidValue`);
* anything else: logged with its traceback, answered 500 ``internal_error`` without it
  (unless the app runs in debug mode, where Flask shows the traceback).
"""

from __future__ import annotations

import logging
from typing import Any

import marshmallow as ma
from flask import Flask, jsonify
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from kiln.core.errors import KilnError
from kiln.core.redaction import redact_text

log = logging.getLogger("kiln.web")
MISSING = "Missing data for required field."


class ErrorSchema(ma.Schema):
    error = ma.fields.String(
        required=True, metadata={"description": "machine-readable code, e.g. not_found"}
    )
    message = ma.fields.String(required=True, metadata={"description": "for people"})
    details = ma.fields.Dict(
        required=True, metadata={"description": "what the error is about (field, id, ...)"}
    )


class MissingField(KilnError):
    """A required field is missing."""

    status_code = 400


class BadRequest(KilnError):
    """The request is malformed."""

    status_code = 400


def body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or {}}


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """``{"json": {"tasks": {0: {"name": [...]}}}}`` -> ``{"tasks[0].name": [...]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            if isinstance(key, int):
                name = f"{prefix}[{key}]"
            elif key == "_schema":
                name = prefix or "body"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = list(messages)
    elif isinstance(messages, list):
        for i, value in enumerate(messages):
            out.update(_flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix or "body"] = [str(messages)]
    return out


def validation_error(messages: dict[str, Any]) -> tuple[dict[str, Any], int]:
    fields: dict[str, list[str]] = {}
    for location, per_location in messages.items():
        for name, msgs in _flatten(per_location).items():
            fields[name if location == "json" else f"{location}.{name}"] = msgs
    if fields == {"body": ["Invalid JSON body."]}:
        return body("invalid_json", "the request body is not valid JSON"), 400
    first, msgs = next(iter(sorted(fields.items())))
    if all(m == [MISSING] for m in fields.values()):
        missing = sorted(fields)
        return body(
            "missing_field",
            f"missing required field {first!r}",
            {"field": first, "missing": missing, "fields": fields},
        ), 400
    if msgs == ["Unknown field."]:
        message = f"unknown field {first!r}"
    else:
        message = f"{first}: {' '.join(msgs)}"
    return body("validation_error", message, {"field": first, "fields": fields}), 422


class KilnApi(Api):
    """flask-smorest's Api with Kiln's error shape, in the responses and in the spec."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException):  # type: ignore[override]
        data = getattr(error, "data", None) or {}
        if "messages" in data:
            payload, status = validation_error(data["messages"])
            return jsonify(payload), status
        code = (error.name or "error").lower().replace(" ", "_")
        message = data.get("message") or error.description or error.name
        response = jsonify(body(code, message))
        response.status_code = error.code or 500
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KilnError)
    def kiln_error(exc: KilnError):  # type: ignore[no-untyped-def]
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        # A message may quote what was sent (a source URL with its password): shown redacted.
        response = jsonify(body(exc.code, redact_text(exc.message), _jsonable(exc.details)))
        response.status_code = exc.status_code
        if (retry_after := getattr(exc, "retry_after_s", None)) is not None:
            response.headers["Retry-After"] = str(retry_after)  # 429 and 503 may say when
        return response

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):  # type: ignore[no-untyped-def]
        if isinstance(exc, HTTPException):  # reached only when no more specific handler
            return app.extensions["kiln_api"].handle_http_exception(exc)
        log.exception("unhandled error")
        return jsonify(body("internal_error", "internal server error; see the server log")), 500


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool | None | list | dict) else str(v)
            for k, v in details.items()}  # fmt: skip
