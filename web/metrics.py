"""``GET /metrics``: the whole deployment's metrics in Prometheus text format, computed from
the database at scrape time (see :mod:`kiln.app.metrics` for why that covers every process)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from kiln.app.metrics import KilnCollector

blp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    registry = current_app.extensions.get("kiln_metrics")
    if registry is None:
        # Its own registry, not prometheus-client's global one: two apps in one process (the
        # tests) must not share collectors, and this process's own counters are not the point.
        registry = CollectorRegistry(auto_describe=False)
        registry.register(KilnCollector(current_app.extensions["kiln"]))
        current_app.extensions["kiln_metrics"] = registry
    return registry


@blp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    return Response(generate_latest(_registry()), mimetype=None, content_type=CONTENT_TYPE_LATEST)


blueprints = [blp]
