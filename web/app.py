"""Flask app factory (the API itself is built in its own module set)."""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask("kiln")

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        return {"status": "ok"}

    return app
