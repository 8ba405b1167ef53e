"""Health endpoints: liveness, service info, and a detailed report that follows its
dependencies down and up again (a throwaway Redis stopped and restarted, a database that
cannot be reached, processes that stop heartbeating, instances that are lost)."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from kiln.app.runtime import Kiln
from kiln.store.instances import Registration, register_txn
from kiln.store.processes import register_process_txn
from kiln.store.schema import instances, processes
from kiln.web.app import create_app
from tests.chaos.services import ThrowawayRedis, available, free_port
from tests.conftest import fast_settings


@pytest.fixture
def throwaway_redis():
    reason = available()
    if reason and "redis" in reason:
        pytest.skip(reason)
    redis = ThrowawayRedis()
    yield redis
    redis.stop()


@pytest.fixture
def deployment(pg_url, throwaway_redis):
    """A Kiln on its own database and its own Redis, with a live controller and worker (their
    heartbeat rows), and the app built on it."""
    kiln = Kiln(fast_settings(database_url=pg_url, broker_url=throwaway_redis.url), pool_size=2)
    kiln.txn(lambda c: register_process_txn(c, "controller:test:1:a", "controller"))
    kiln.txn(lambda c: register_process_txn(c, "worker:test:2:b", "worker", concurrency=4))
    yield kiln, create_app(kiln).test_client()
    kiln.close()


def detailed(client) -> tuple[int, dict]:
    response = client.get("/health/detailed")
    return response.status_code, response.get_json()


def test_liveness_reports_version_and_uptime(deployment):
    _, client = deployment
    body = client.get("/health").get_json()
    assert body["status"] == "ok"
    assert body["version"] == "0.1.0"
    assert body["uptime_s"] >= 0


def test_service_info_names_the_service_and_its_capabilities(deployment):
    _, client = deployment
    body = client.get("/").get_json()
    assert body["name"] == "Kiln" and body["version"] == "0.1.0"
    assert {"workflows", "pipelines", "dispatcher", "scheduler", "health", "metrics"} <= set(
        body["capabilities"]
    )
    assert body["endpoints"]["health_detailed"] == "/health/detailed"


def test_everything_up_is_healthy_with_a_measured_latency_per_component(deployment):
    _, client = deployment
    code, body = detailed(client)
    assert code == 200, body
    assert body["status"] == "healthy"
    assert set(body["components"]) == {"database", "broker", "controller", "workers", "instances"}
    for name, component in body["components"].items():
        assert component["status"] == "healthy", (name, component)
        assert isinstance(component["latency_ms"], float) and component["latency_ms"] >= 0
    assert body["components"]["workers"]["threads"] == 4
    assert body["components"]["database"]["critical"] is True


def test_redis_going_down_makes_the_deployment_degraded_and_coming_back_healthy(
    deployment, throwaway_redis
):
    _, client = deployment
    assert detailed(client)[1]["status"] == "healthy"
    throwaway_redis.stop()
    code, body = detailed(client)
    assert code == 200  # degraded still serves: submissions wait in the database
    assert body["status"] == "degraded"
    broker = body["components"]["broker"]
    assert broker["status"] == "unhealthy" and broker["critical"] is False
    assert broker["error"]
    assert body["components"]["database"]["status"] == "healthy"
    throwaway_redis.start()
    code, body = detailed(client)
    assert (code, body["status"]) == (200, "healthy")
    assert body["components"]["broker"]["status"] == "healthy"


def test_an_unreachable_database_is_unhealthy_with_503(throwaway_redis):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/kiln"
    kiln = Kiln(fast_settings(database_url=url, broker_url=throwaway_redis.url), pool_size=1)
    try:
        client = create_app(kiln).test_client()
        code, body = detailed(client)
        assert code == 503
        assert body["status"] == "unhealthy"
        assert body["components"]["database"]["status"] == "unhealthy"
        assert body["components"]["broker"]["status"] == "healthy"
        for name in ("controller", "workers", "instances"):
            assert body["components"][name]["status"] == "unknown"
        assert client.get("/health").status_code == 200  # liveness does not touch the database
    finally:
        kiln.close()


def test_no_live_controller_or_worker_is_degraded(deployment):
    kiln, client = deployment
    kiln.txn(
        lambda c: c.execute(
            processes.update().values(heartbeat_at=sa.func.now() - sa.text("interval '1 minute'"))
        )
    )
    code, body = detailed(client)
    assert (code, body["status"]) == (200, "degraded")
    assert body["components"]["controller"]["status"] == "unhealthy"
    assert body["components"]["workers"]["status"] == "unhealthy"
    assert "no worker heartbeated" in body["components"]["workers"]["error"]


def test_a_lost_instance_and_a_model_type_nobody_serves_are_degraded(deployment):
    kiln, client = deployment
    iid, _ = kiln.txn(
        lambda c: register_txn(
            c, Registration.parse({"url": "http://127.0.0.1:1/a", "model_type": "llama"})
        )
    )
    assert detailed(client)[1]["components"]["instances"]["status"] == "healthy"
    kiln.submit(
        {"name": "w", "tasks": [{"name": "T", "model_type": "mistral"}]}, check_handlers=False
    )
    kiln.txn(
        lambda c: c.execute(instances.update().where(instances.c.id == iid).values(status="lost"))
    )
    code, body = detailed(client)
    assert (code, body["status"]) == (200, "degraded")
    component = body["components"]["instances"]
    assert component["status"] == "degraded"
    assert component["lost"] == 1 and component["unserved_model_types"] == ["mistral"]


def test_the_in_process_broker_is_always_reachable(pg_url):
    kiln = Kiln(dataclasses.replace(fast_settings(database_url=pg_url), broker_url=""))
    try:
        body = create_app(kiln).test_client().get("/health/detailed").get_json()
        assert body["components"]["broker"] == {
            "status": "healthy", "critical": False, "kind": "in-process",
            "latency_ms": body["components"]["broker"]["latency_ms"],
        }  # fmt: skip
    finally:
        kiln.close()
