"""Flask app factory: Kiln's HTTP API (workflows, contexts, pipelines, the dispatcher) with an
OpenAPI 3 document generated from its schemas at ``/openapi.json``.

Configuration: ``KILN_API_TOKEN``/``KILN_API_TOKENS``/``KILN_METRICS_TOKEN`` (who may do
what: :mod:`kiln.web.auth`),
``KILN_MAX_BODY_BYTES`` (request body limit, default 1 MiB; larger bodies get 413),
``KILN_MAX_JSON_DEPTH`` (deeper JSON bodies get 413; see :mod:`kiln.web.limits`),
``KILN_DEBUG=1`` (tracebacks in error responses; never in production).
"""

from __future__ import annotations

import os

from flask import Flask

from kiln.app.runtime import Kiln
from kiln.core.config import Settings
from kiln.web import auth, limits
from kiln.web.errors import KilnApi, register_error_handlers

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Connections the web process keeps: at least gunicorn's --threads (the Procfile's 8; up to 16),
# so that no request opens one. A pool smaller than the threads opens overflow connections
# under load and closes each when it is handed back: a PostgreSQL backend started per request,
# whose statements are never prepared. The pool opens connections only when a thread needs one,
# so a process holds at most one per thread (KILN_DB_POOL_SIZE overrides it).
POOL_SIZE = 16


def create_app(kiln: Kiln | None = None) -> Flask:
    if kiln is None:
        from kiln.core.handlers import load_imports

        load_imports()
        settings = Settings.from_env()
        sender = None
        if not settings.embedded_broker:
            # Submissions to an idle queue go straight to the broker (see Kiln.sender).
            from kiln.transport import send_now as sender
        kiln = Kiln(settings, sender=sender, pool_size=POOL_SIZE)
    app = Flask("kiln")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config.update(
        API_TITLE="Kiln",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=int(os.environ.get("KILN_MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES),
        DEBUG=os.environ.get("KILN_DEBUG", "") in ("1", "true", "yes"),
    )
    app.extensions["kiln"] = kiln
    api = KilnApi(
        app,
        spec_kwargs={
            "info": {"description": "Durable workflows, sharded pipelines and the dispatcher."}
        },
    )
    app.extensions["kiln_api"] = api
    api.spec.components.security_scheme(
        "bearerAuth",
        {"type": "http", "scheme": "bearer", "description": "KILN_API_TOKEN, or a token whose "
         "sha256 KILN_API_TOKENS lists with its scopes (docs/security.md)"},
    )  # fmt: skip
    auth.document(api.spec)  # before the blueprints: it sees each operation as it is added
    from kiln.web import pipeline_control as dispatcher
    from kiln.web import pipelines, workflows

    for blueprint in (workflows.blp, pipelines.blp, dispatcher.blp):
        api.register_blueprint(blueprint)
    from kiln.web import ui  # the operator's dashboard at /ui (HTML, not part of the OpenAPI doc

    app.register_blueprint(ui.bp)
    from kiln.web import ui_login

    app.register_blueprint(ui_login.bp)
    from kiln.web import instances_api, predictor_api, scheduler_api

    for blueprint in (instances_api.blp, predictor_api.blp, scheduler_api.blp):
        api.register_blueprint(blueprint)
    from kiln.web import reruns, schedules, signals

    for blueprint in (schedules.blp, reruns.blp, signals.blp):
        api.register_blueprint(blueprint)
    from kiln.web import health, metrics

    for module in (health, metrics):
        for plain_blueprint in module.blueprints:
            app.register_blueprint(plain_blueprint)
    register_error_handlers(app)
    auth.install(app, kiln.settings)
    limits.install(app, kiln.settings.max_json_depth)  # after auth: strangers get a 401 first
    from kiln.app.logs import setup_logging_if_unconfigured

    setup_logging_if_unconfigured("web")  # gunicorn leaves the root logger bare
    from kiln.app import tracing

    tracing.instrument_app(app, kiln)  # OTEL_* variables set: a span per request (else nothing)
    return app
