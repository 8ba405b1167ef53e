"""A policy's tuning parameters are checked (type and range) before they are stored, and bad
ones stored before that check (or by hand) never crash a controller or the dry run: the
policy runs with its defaults and says so once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.runtime import Kiln
from kiln.store import scheduler_state as state_store
from kiln.web.app import create_app
from kiln.workers.controller import Controller
from kiln.workers.scheduling_hooks import scheduler_order, scheduling_hooks

# Each reproduces issue 12's defect 1: all were stored with a 200, then crashed every
# controller pass (TypeError, ZeroDivisionError) and made schedule-next a 500.
BAD_PARAMS = [
    ("Priority", {"aging_per_minute": "fast"}, "aging_per_minute"),
    ("Priority", {"aging_per_minute": None}, "aging_per_minute"),
    ("ShortestPredicted", {"aging": "x"}, "aging"),
    ("Fair", {"prune_every": 0}, "prune_every"),
]
MORE_BAD_PARAMS = [
    ("Priority", {"aging_per_minute": -1}, "aging_per_minute"),
    ("Priority", {"aging_per_minute": True}, "aging_per_minute"),
    ("Priority", {"aging_per_minute": 1e300}, "aging_per_minute"),
    ("Priority", {"aging": 1}, "aging"),
    ("Fair", {"prune_every": 1.5}, "prune_every"),
    ("Fair", {"priority_base": 1e300}, "priority_base"),
    ("Fair", {"priority_base": 0}, "priority_base"),
    ("ShortestPredicted", {"quantile": 2}, "quantile"),
    ("ShortestPredicted", {"starvation_limit": "soon"}, "starvation_limit"),
    ("RoundRobin", {"anything": 1}, "anything"),
]


@pytest.fixture
def client(kiln: Kiln, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("KILN_API_TOKEN", raising=False)
    return create_app(kiln).test_client()


def store_unchecked(kiln: Kiln, policy: str, params: Any) -> None:
    """Write the policy and params straight into the store, as a Kiln before the check did."""

    def write(conn: Any) -> None:
        stored = state_store.load_txn(conn, lock=True)
        stored.policy = policy
        stored.params = {**stored.params, policy: params}
        state_store.write_txn(conn, stored)

    kiln.txn(write)


def ready_tasks(kiln: Kiln, count: int) -> int:
    """A run of ``count`` independent tasks of mixed priority, all ready (nothing sends them:
    ``kiln`` has no broker sender, so only a controller pass dispatches them)."""
    return kiln.submit(
        {
            "name": "many",
            "tasks": [
                {"name": f"t{i}", "handler": "noop", "priority": i % 3} for i in range(count)
            ],
        }
    )


def bad_params_warnings(caplog: pytest.LogCaptureFixture, field: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "params" in r.getMessage() and field in r.getMessage()
    ]


@pytest.mark.parametrize(("policy", "params", "field"), BAD_PARAMS + MORE_BAD_PARAMS)
def test_policy_params_of_the_wrong_type_or_range_are_refused_with_a_400_and_not_stored(
    client, policy, params, field
):
    answer = client.put("/scheduler/policy", json={"policy": policy, "params": params})
    assert answer.status_code == 400, answer.get_json()
    body = answer.get_json()
    assert body["error"] == "invalid_policy"
    assert body["details"]["field"] == f"params.{field}"
    assert field in body["message"]
    stats = client.get("/scheduler/stats").get_json()
    assert stats["policy"] == "FIFO"
    assert stats["params"] == {}


def test_valid_params_within_range_are_stored_and_merged(client):
    ok = client.put("/scheduler/policy", json={"policy": "Fair", "params": {"prune_every": 7}})
    assert ok.status_code == 200, ok.get_json()
    ok = client.put("/scheduler/policy", json={"policy": "Fair", "params": {"priority_base": 2}})
    assert ok.status_code == 200, ok.get_json()
    stats = client.get("/scheduler/stats").get_json()
    assert stats["params"] == {"prune_every": 7, "priority_base": 2}
    assert stats["params_error"] is None
    nullable = {"quantile": None, "starvation_limit": None, "backlog_factor": None}
    ok = client.put("/scheduler/policy", json={"policy": "ShortestPredicted", "params": nullable})
    assert ok.status_code == 200, ok.get_json()


def test_a_quantum_out_of_range_is_refused_with_a_400_naming_it(client):
    for bad in (0, -5, 10**13, 2**63 - 1, 1.5, "10"):
        answer = client.put(
            "/scheduler/policy", json={"policy": "RoundRobin", "quantum_micros": bad}
        )
        assert answer.status_code == 400, (bad, answer.get_json())
        assert answer.get_json()["details"]["field"] == "quantum_micros"


@pytest.mark.parametrize(("policy", "params", "field"), BAD_PARAMS)
def test_a_controller_pass_survives_bad_params_stored_before_the_check_and_uses_the_defaults(
    kiln, caplog, policy, params, field
):
    store_unchecked(kiln, policy, params)
    ready_tasks(kiln, 20)  # the issue needed 17 or more ready tasks to reach the policy
    sent: list[Any] = []
    controller = Controller(
        kiln,
        send=lambda dispatches, _batch: sent.extend(dispatches),
        hooks=scheduling_hooks(kiln),
        order=scheduler_order(kiln),
    )
    with caplog.at_level(logging.WARNING, logger="kiln.scheduler"):
        controller.tick()
        controller.tick()
    assert len(sent) == 20
    assert kiln.scheduler.service.scheduler.policy_name == policy
    warnings = bad_params_warnings(caplog, field)
    assert len(warnings) == 1, warnings  # once per distinct bad value, not every pass
    assert "defaults" in warnings[0]


@pytest.mark.parametrize(("policy", "params", "field"), BAD_PARAMS)
def test_schedule_next_and_stats_answer_200_with_bad_stored_params(
    kiln, client, caplog, policy, params, field
):
    store_unchecked(kiln, policy, params)
    ready_tasks(kiln, 20)
    with caplog.at_level(logging.WARNING, logger="kiln.scheduler"):
        for _ in range(2):
            dry_run = client.post("/scheduler/schedule-next?limit=20")
            assert dry_run.status_code == 200, dry_run.get_json()
    body = dry_run.get_json()
    assert body["policy"] == policy
    assert len(body["queue"]) == 20
    if policy == "Priority":  # the default aging of 1 per minute, not the stored value
        assert "aging 1/min" in body["next"]["reason"]
    assert len(bad_params_warnings(caplog, field)) == 1
    stats = client.get("/scheduler/stats")
    assert stats.status_code == 200
    assert field in stats.get_json()["params_error"]


def test_stored_params_that_are_not_an_object_or_an_unknown_policy_fall_back_too(kiln, client):
    store_unchecked(kiln, "Priority", "fast")
    assert client.post("/scheduler/schedule-next").status_code == 200

    def unknown_policy(conn: Any) -> None:
        stored = state_store.load_txn(conn, lock=True)
        stored.policy = "Lottery"
        state_store.write_txn(conn, stored)

    kiln.txn(unknown_policy)
    dry_run = client.post("/scheduler/schedule-next")
    assert dry_run.status_code == 200
    assert dry_run.get_json()["policy"] == "FIFO"
    assert client.get("/scheduler/stats").status_code == 200


def test_choosing_a_policy_again_drops_its_bad_stored_params_instead_of_refusing(kiln, client):
    store_unchecked(kiln, "Priority", {"aging_per_minute": "fast"})
    assert client.put("/scheduler/policy", json={"policy": "FIFO"}).status_code == 200
    again = client.put("/scheduler/policy", json={"policy": "Priority", "params": {}})
    assert again.status_code == 200, again.get_json()
    stats = client.get("/scheduler/stats").get_json()
    assert stats["params"] == {}
    assert stats["params_error"] is None
