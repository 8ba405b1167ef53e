"""Reference TaskInstance server: the seed-000 protocol served for real, plus Kiln registration.

Start it with ``python -m kiln.taskinstance.server.app --model-type m --port 0`` (or the
``instance`` click command). It prints exactly one line on stdout, ``listening on
http://HOST:PORT``, then logs on stderr. SIGTERM or SIGINT stops it gracefully: new
enqueues get 503, running tasks finish (up to ``--drain-timeout``), a last heartbeat says
``offline``, and the process exits 0.

Protocol routes (errors: ``{"error": code, "message": text, "details": {...}}``)
    ``POST /models/start {model_type, count=1, config?}`` → 200 ``{status: "started",
    model_type, replicas_running, started, slots}``; 409 ``model_mismatch`` if replicas
    of another model type run.
    ``POST /models/stop {count: int|null}`` → 200 ``{status, model_type,
    replicas_running, stopped, slots}`` (null stops all replicas).
    ``GET /status`` → ``{instance_id, model_type, replicas_running, queue_size, status,
    active_tasks, max_concurrency, slots}``; status ``running|stopped|draining``.
    ``POST /queue/enqueue {input_data, metadata?, task_id?}`` → 201 ``{task_id,
    queue_size, enqueue_time, status}`` for a new task, 200 with the existing entry when
    ``task_id`` is already known with the same input (idempotent), 409
    ``task_id_conflict`` when it is known with different input, 422 ``invalid_metadata``,
    429 ``queue_full``, 503 ``draining``.
    ``POST /queue/predict {metadata, input_data?}`` → ``{expected_ms, error_ms,
    queue_size, wait_ms, execution_ms}``; 409 ``instance_stopped`` with no replicas.
    ``GET /queue/status`` → ``{instance_id, status, queue_size, active_tasks, slots,
    max_concurrency, replicas_running, queued: [task_id], running: [{task_id, status,
    progress, message}], counters: {enqueued, completed, failed}}``.
    ``GET /results/<task_id>`` → ``{task_id, result, status, error, enqueue_time,
    completion_time, wait_time, execution_time, total_time, start_time, progress,
    message, metadata}`` (ms; see :mod:`.runtime`); 404 ``task_not_found``.
    ``GET /results[?status=...]`` → ``{results: [...], count}``.
    ``GET /health`` → ``{status, instance_id, model_type, uptime_s, registration}``.
    Task metadata the simulation reads: ``input_tokens``, ``output_tokens`` (else
    ``max_tokens``, else 16), ``duration_ms``, ``fail`` (true or an error message; the task
    fails half-way through its duration). Completed results are ``{text, model,
    input_tokens, output_tokens, simulated_duration_ms}``.

Registration and heartbeat contract (what Kiln must serve)
    Only when ``kiln_url`` is set. Every request carries ``Content-Type:
    application/json`` and, when ``KILN_API_TOKEN`` is set in the environment,
    ``Authorization: Bearer <KILN_API_TOKEN>``.

    1. ``POST {kiln_url}/instances`` with exactly::

           {"name": str, "url": "http://host:port", "model_type": str,
            "hardware": str, "software_version": str, "capabilities": [str, ...],
            "max_concurrency": int}

       ``max_concurrency`` is per replica (as configured). Kiln answers 200 or 201 with a
       JSON object containing ``"id"`` (string or number; other keys are ignored). Any
       other status, a body without ``id``, or no connection counts as a failure: the
       instance retries after 0.5 s, doubling up to ``registration_backoff_max`` (default
       10 s), each delay jittered ±20 %, forever, while it keeps serving tasks. Kiln
       should treat a second registration with the same ``url`` as the same instance
       coming back (the instance registers again after a Kiln restart).
    2. Every ``heartbeat_interval`` seconds (default 2.0) after registering,
       ``POST {kiln_url}/instances/{id}/heartbeat`` with exactly::

           {"status": "running"|"stopped"|"draining"|"offline",
            "active_tasks": int, "queue_size": int,
            "max_concurrency": int,
            "counters": {"completed": int, "failed": int, "enqueued": int},
            "tasks": [{"task_id": str, "status": "queued"|"running"|"completed"|"failed",
                       "progress": float 0..1, "message": str}, ...]}

       Here ``max_concurrency`` is the *current* slot count (replicas × per-replica
       concurrency). ``tasks`` lists every running task, up to 200 queued tasks (FIFO
       order) and every task that finished since the last heartbeat Kiln answered with 2xx
       (so each terminal state is reported at least once). Kiln answers 2xx (body
       ignored). 404 means Kiln forgot the instance: it registers again (step 1) and
       heartbeats under the new id. Other failures are logged and the next heartbeat
       comes on schedule. ``offline`` is sent once, on graceful shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from kiln.taskinstance.ratelimit import RateLimiter
from kiln.taskinstance.server.openai_compat import create_openai_blueprint
from kiln.taskinstance.server.problems import RuntimeProblem
from kiln.taskinstance.server.registration import Registrar, RegistrationState
from kiln.taskinstance.server.runtime import InstanceRuntime
from kiln.taskinstance.server.simulation import DurationModel, InvalidMetadata

__all__ = ["InstanceConfig", "InstanceServer", "create_instance_app", "instance_command"]

SOFTWARE_VERSION = "kiln-taskinstance/0.1.0"
log = logging.getLogger("kiln.taskinstance")


@dataclass
class InstanceConfig:
    """Everything an instance is started with; the CLI options map onto these fields."""

    model_type: str
    host: str = "127.0.0.1"
    port: int = 0
    name: str | None = None
    advertise_url: str | None = None
    hardware: str = "simulated"
    software_version: str = SOFTWARE_VERSION
    capabilities: list[str] = field(default_factory=list)
    max_concurrency: int = 4
    replicas: int = 1
    speed: float = 1.0
    jitter: float = 0.0
    base_ms: float = 1.8
    per_input_token_ms: float = 0.0994
    per_output_token_ms: float = 30.1
    max_queue_size: int | None = None
    kiln_url: str | None = None
    kiln_api_token: str | None = None
    heartbeat_interval: float = 2.0
    registration_backoff_max: float = 10.0
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    api_key: str | None = None
    drain_timeout: float = 30.0

    def duration_model(self) -> DurationModel:
        return DurationModel(
            base_ms=self.base_ms,
            per_input_token_ms=self.per_input_token_ms,
            per_output_token_ms=self.per_output_token_ms,
            speed=self.speed,
            jitter=self.jitter,
        )


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.details = status, code, details


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None):
    response = jsonify({"error": code, "message": message, "details": details or {}})
    response.status_code = status
    return response


def _json_body(required: bool = True) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and not required and not request.get_data():
        return {}
    if not isinstance(body, dict):
        raise _BadRequest(400, "invalid_json", "the request body must be a JSON object")
    return body


def _optional_int(body: dict[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _BadRequest(422, "invalid_field", f"{key} must be an integer >= {minimum}", field=key)
    return value


def create_instance_app(
    config: InstanceConfig,
    runtime: InstanceRuntime | None = None,
    registration: RegistrationState | None = None,
) -> Flask:
    """The instance's Flask app. The caller starts ``runtime`` (``runtime.start()``).

    With no ``runtime`` one is built from ``config``; it is available as
    ``app.extensions["kiln_taskinstance"]``.
    """
    runtime = runtime or InstanceRuntime(
        config.model_type,
        max_concurrency=config.max_concurrency,
        replicas=config.replicas,
        duration_model=config.duration_model(),
        max_queue_size=config.max_queue_size,
    )
    app = Flask("kiln.taskinstance")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["kiln_taskinstance"] = runtime
    started = time.monotonic()
    limiter = RateLimiter(config.rpm_limit, config.tpm_limit)
    app.register_blueprint(create_openai_blueprint(runtime, limiter, config.api_key))

    @app.errorhandler(_BadRequest)
    def _bad_request(err: _BadRequest) -> Response:
        return _error(err.status, err.code, str(err), err.details)

    @app.errorhandler(RuntimeProblem)
    def _runtime_problem(err: RuntimeProblem) -> Response:
        return _error(err.http_status, err.code, str(err), err.details)

    @app.errorhandler(InvalidMetadata)
    def _invalid_metadata(err: InvalidMetadata) -> Response:
        return _error(422, "invalid_metadata", str(err))

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        name = (err.name or "error").lower().replace(" ", "_")
        return _error(err.code or 500, name, err.description or name)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal_error", "the instance hit an unexpected error")

    @app.get("/health")
    def health() -> Response:
        return jsonify(
            {
                "status": runtime.status_text(),
                "instance_id": runtime.instance_id,
                "model_type": runtime.model_type,
                "uptime_s": round(time.monotonic() - started, 3),
                "registration": registration.to_json() if registration else None,
            }
        )

    @app.post("/models/start")
    def models_start() -> Response:
        body = _json_body()
        model_type = body.get("model_type")
        if not isinstance(model_type, str) or not model_type:
            raise _BadRequest(400, "missing_field", "model_type is required", field="model_type")
        count = _optional_int(body, "count", 1, 1)
        model_config = body.get("config")
        if model_config is not None and not isinstance(model_config, dict):
            raise _BadRequest(422, "invalid_field", "config must be an object", field="config")
        return jsonify(runtime.start_models(model_type, count or 1, model_config))

    @app.post("/models/stop")
    def models_stop() -> Response:
        body = _json_body(required=False)
        return jsonify(runtime.stop_models(_optional_int(body, "count", None, 0)))

    @app.get("/status")
    def status() -> Response:
        return jsonify(runtime.status())

    @app.post("/queue/enqueue")
    def enqueue() -> tuple[Response, int]:
        body = _json_body()
        if "input_data" not in body:
            raise _BadRequest(400, "missing_field", "input_data is required", field="input_data")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise _BadRequest(422, "invalid_metadata", "metadata must be an object")
        task_id = body.get("task_id")
        if task_id is not None and (
            not isinstance(task_id, str) or not task_id or len(task_id) > 200 or "/" in task_id
        ):
            raise _BadRequest(422, "invalid_field", "task_id must be 1-200 characters without '/'")
        entry, created = runtime.submit(body["input_data"], metadata, task_id)
        return jsonify({**entry, "created": created}), 201 if created else 200

    @app.post("/queue/predict")
    def predict() -> Response:
        body = _json_body(required=False)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise _BadRequest(422, "invalid_metadata", "metadata must be an object")
        return jsonify(runtime.predict(metadata, body.get("input_data")))

    @app.get("/queue/status")
    def queue_status() -> Response:
        return jsonify(runtime.queue_status())

    @app.get("/results/<task_id>")
    def result(task_id: str) -> Response:
        return jsonify(runtime.result(task_id))

    @app.get("/results")
    def results() -> Response:
        items = runtime.results()
        wanted = request.args.get("status")
        if wanted:
            items = [item for item in items if item["status"] == wanted]
        return jsonify({"results": items, "count": len(items)})

    return app


class InstanceServer:
    """An instance bound to its port: runtime, threaded HTTP server, optional registrar."""

    def __init__(self, config: InstanceConfig) -> None:
        self.config = config
        self.runtime = InstanceRuntime(
            config.model_type,
            max_concurrency=config.max_concurrency,
            replicas=config.replicas,
            duration_model=config.duration_model(),
            max_queue_size=config.max_queue_size,
        )
        self.registrar: Registrar | None = None
        if config.kiln_url:
            self.registrar = Registrar(
                config.kiln_url,
                self._registration_body,
                self.runtime.heartbeat_snapshot,
                self.runtime.ack_heartbeat,
                heartbeat_interval=config.heartbeat_interval,
                backoff_max=config.registration_backoff_max,
                api_token=config.kiln_api_token,
            )
        state = self.registrar.state if self.registrar else None
        self.app = create_instance_app(config, self.runtime, state)
        self._http = make_server(config.host, config.port, self.app, threaded=True)
        self.port: int = self._http.server_port
        self.url = f"http://{config.host}:{self.port}"
        self.advertise_url = config.advertise_url or self._default_advertise_url()
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="instance-http", daemon=True
        )

    def _default_advertise_url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"http://{host}:{self.port}"

    def _registration_body(self) -> dict[str, Any]:
        config, url = self.config, self.advertise_url
        return {
            "name": config.name or f"{config.model_type}@{url.split('://', 1)[-1]}",
            "url": url,
            "model_type": self.runtime.model_type,
            "hardware": config.hardware,
            "software_version": config.software_version,
            "capabilities": list(config.capabilities) or [self.runtime.model_type],
            "max_concurrency": config.max_concurrency,
        }

    def start(self) -> InstanceServer:
        self.runtime.start()
        self._thread.start()
        if self.registrar:
            self.registrar.start()
        return self

    def stop(self) -> None:
        """Drain running tasks, say goodbye to Kiln, stop serving HTTP."""
        drained = self.runtime.drain(self.config.drain_timeout)
        if not drained:
            log.warning("drain timeout: running tasks were aborted")
        if self.registrar:
            final, _ = self.runtime.heartbeat_snapshot()
            self.registrar.stop({**final, "status": "offline"})
        self._http.shutdown()
        self._thread.join(timeout=5.0)
        self._http.server_close()


@click.command("instance")
@click.option("--model-type", required=True, help="Model this instance serves.")
@click.option("--port", type=int, default=0, show_default=True, help="0 picks a free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--name", default=None, help="Name registered with Kiln [model@host:port].")
@click.option("--advertise-url", default=None, help="URL Kiln should use [http://host:port].")
@click.option("--hardware", default="simulated", show_default=True)
@click.option("--software-version", default=SOFTWARE_VERSION, show_default=True)
@click.option("--capability", "capabilities", multiple=True, help="Repeatable [model type].")
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Concurrent tasks per replica.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Replicas running at start.",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Time scale: wall time = model time x speed.",
)
@click.option(
    "--jitter",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Relative std-dev of per-task duration noise.",
)
@click.option("--max-queue-size", type=click.IntRange(min=1), default=None)
@click.option("--kiln-url", envvar="KILN_URL", default=None, help="Kiln to register with.")
@click.option(
    "--heartbeat-interval", type=click.FloatRange(min=0.01), default=2.0, show_default=True
)
@click.option(
    "--registration-backoff-max",
    type=click.FloatRange(min=0.01),
    default=10.0,
    show_default=True,
    help="Cap of the registration retry delay (s).",
)
@click.option(
    "--rpm-limit", type=click.IntRange(min=1), default=None, help="Requests per minute on /v1/*."
)
@click.option(
    "--tpm-limit", type=click.IntRange(min=1), default=None, help="Tokens per minute on /v1/*."
)
@click.option(
    "--api-key", envvar="KILN_INSTANCE_API_KEY", default=None, help="Bearer key required on /v1/*."
)
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
def instance_command(log_level: str, capabilities: tuple[str, ...], **options: Any) -> None:
    """Run a simulated TaskInstance serving the Kiln protocol and OpenAI-style /v1 routes."""
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    config = InstanceConfig(
        capabilities=list(capabilities),
        kiln_api_token=os.environ.get("KILN_API_TOKEN") or None,
        **options,
    )
    server = InstanceServer(config).start()
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    click.echo(f"listening on {server.url}")
    sys.stdout.flush()
    while not stop.wait(0.2):
        pass
    log.info("stopping")
    server.stop()


if __name__ == "__main__":
    instance_command()
