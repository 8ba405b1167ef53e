"""Bearer-token protection of the mutating endpoints.

When ``KILN_API_TOKEN`` is set, every ``POST``/``PUT``/``PATCH``/``DELETE`` must carry
``Authorization: Bearer <token>`` (compared in constant time); reads stay open. When it is
not set (the embedded default, meant for one machine) nothing is checked.
"""

from __future__ import annotations

import hmac

from flask import Flask, current_app, jsonify, request

from kiln.web.errors import body

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def install(app: Flask, token: str) -> None:
    app.config["KILN_API_TOKEN"] = token

    @app.before_request
    def require_token():  # type: ignore[no-untyped-def]
        expected = current_app.config.get("KILN_API_TOKEN") or ""
        if not expected or request.method not in MUTATING:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return None
        response = jsonify(
            body("unauthorized", "this endpoint needs 'Authorization: Bearer <KILN_API_TOKEN>'")
        )
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="kiln"'
        return response
