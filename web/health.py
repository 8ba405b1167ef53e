"""Health and service information (seed 002's contract, with Kiln's components).

* ``GET /health`` — liveness: the web process answers. ``{status: "ok", version,
  uptime_s}``; touches nothing else, so a load balancer never takes the API out of rotation
  because a dependency blinked.
* ``GET /health/detailed`` — each component with ``status`` (``healthy | degraded |
  unhealthy``, or ``unknown`` when it cannot be checked because the database is down),
  ``latency_ms`` measured for this request, ``critical`` and what was found:

  ========== ======== ===================================================================
  component  critical unhealthy / degraded when
  ========== ======== ===================================================================
  database   yes      ``SELECT 1`` fails
  broker     no       Redis does not answer ``PING`` within 1 s (in-process: always ok)
  controller no       no controller heartbeated within 10 s (nothing gets dispatched)
  workers    no       no worker heartbeated within max(10 s, KILN_LEASE_S)
  instances  no       degraded: a registered instance is lost, or ready model_type tasks
                      have no live instance serving them; no instances at all is healthy
  ========== ======== ===================================================================

  Overall ``unhealthy`` (HTTP **503**) when a critical component is unhealthy; ``degraded``
  (200) when any other component is not healthy — submitted work is kept in the database and
  runs once the component is back; ``healthy`` (200) otherwise.
* ``GET /`` — ``{name, version, description, capabilities, endpoints}``; ``capabilities`` are
  the API areas this app serves (its blueprints).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify

from kiln.core.errors import DatabaseUnavailable
from kiln.web.common import kiln

blp = Blueprint("health", __name__)
CONTROLLER_STALE_S = 10.0  # controllers heartbeat every 2 s
HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN = "healthy", "degraded", "unhealthy", "unknown"


def version() -> str:
    try:
        return importlib.metadata.version("kiln")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@blp.record_once
def _remember_start(state: Any) -> None:
    state.app.extensions.setdefault("kiln_started_at", time.time())


def _uptime_s() -> float:
    return round(time.time() - current_app.extensions.get("kiln_started_at", time.time()), 3)


@blp.get("/health")
def liveness():  # type: ignore[no-untyped-def]
    return jsonify({"status": "ok", "version": version(), "uptime_s": _uptime_s()})


@blp.get("/")
def service_info():  # type: ignore[no-untyped-def]
    endpoints = {
        "health": "/health",
        "health_detailed": "/health/detailed",
        "metrics": "/metrics",
        "openapi": "/openapi.json",
    }
    if "ui" in current_app.blueprints:
        endpoints["ui"] = "/ui"
    return jsonify(
        {
            "name": "Kiln",
            "version": version(),
            "description": "Durable workflows, sharded pipelines and the dispatcher.",
            "capabilities": sorted(current_app.blueprints),
            "endpoints": endpoints,
        }
    )


# --- detailed ---------------------------------------------------------------------------


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = check()
    except DatabaseUnavailable as exc:
        result = {"status": UNHEALTHY, "error": str(exc).splitlines()[0]}
    except Exception as exc:  # noqa: BLE001 - a health check reports, it does not raise
        result = {"status": UNHEALTHY, "error": f"{type(exc).__name__}: {exc}"}
    return {**result, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


def check_database() -> dict[str, Any]:
    kiln().monitor.ping()
    return {"status": HEALTHY, "dialect": kiln().dialect}


def check_broker() -> dict[str, Any]:
    settings = kiln().settings
    if settings.embedded_broker:
        return {"status": HEALTHY, "kind": "in-process"}
    import redis

    client = redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=1.0, socket_timeout=1.0
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        return {"status": UNHEALTHY, "kind": "redis", "error": str(exc)}
    finally:
        client.close()
    return {"status": HEALTHY, "kind": "redis", "queue": settings.queue_name}


def _processes(kind: str, stale_after_s: float) -> dict[str, Any]:
    rows = kiln().monitor.live_processes(kind, stale_after_s=stale_after_s)
    now = dt.datetime.now(dt.UTC)
    oldest_beat = max(((now - r.heartbeat_at).total_seconds() for r in rows), default=None)
    out: dict[str, Any] = {
        "status": HEALTHY if rows else UNHEALTHY,
        "live": len(rows),
        "stale_after_s": stale_after_s,
        "oldest_heartbeat_age_s": round(oldest_beat, 3) if oldest_beat is not None else None,
    }
    if kind == "worker":
        out["threads"] = sum(r.concurrency for r in rows)
    if not rows:
        out["error"] = f"no {kind} heartbeated within {stale_after_s:g}s"
    return out


def check_controller() -> dict[str, Any]:
    return _processes("controller", CONTROLLER_STALE_S)


def check_workers() -> dict[str, Any]:
    return _processes("worker", max(CONTROLLER_STALE_S, kiln().settings.lease_s))


def check_instances() -> dict[str, Any]:
    found = kiln().monitor.instance_health()
    problems = []
    if found["lost"]:
        problems.append(f"{found['lost']} instance(s) lost")
    if found["unserved_model_types"]:
        problems.append(
            f"no live instance serves model_type {', '.join(found['unserved_model_types'])}"
        )
    out: dict[str, Any] = {"status": DEGRADED if problems else HEALTHY, **found}
    if problems:
        out["error"] = "; ".join(problems)
    return out


CHECKS: dict[str, tuple[Callable[[], dict[str, Any]], bool]] = {
    "database": (check_database, True),
    "broker": (check_broker, False),
    "controller": (check_controller, False),
    "workers": (check_workers, False),
    "instances": (check_instances, False),
}


def overall(components: dict[str, dict[str, Any]]) -> str:
    if any(c["critical"] and c["status"] != HEALTHY for c in components.values()):
        return UNHEALTHY
    if any(c["status"] != HEALTHY for c in components.values()):
        return DEGRADED
    return HEALTHY


@blp.get("/health/detailed")
def detailed():  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    components: dict[str, dict[str, Any]] = {}
    database_down = False
    for name, (check, critical) in CHECKS.items():
        if database_down and name in ("controller", "workers", "instances"):
            result = {"status": UNKNOWN, "error": "cannot be checked: the database is down"}
        else:
            result = _timed(check)
        components[name] = {"status": result.pop("status"), "critical": critical, **result}
        if name == "database" and components[name]["status"] != HEALTHY:
            database_down = True
    status = overall(components)
    body = {
        "status": status,
        "version": version(),
        "uptime_s": _uptime_s(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "components": components,
    }
    return jsonify(body), 503 if status == UNHEALTHY else 200


blueprints = [blp]
