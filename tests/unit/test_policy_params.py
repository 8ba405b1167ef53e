"""Each policy declares its tuning parameters' types and ranges; nothing builds a policy from
values outside them, and a scheduler given such values (stored earlier) runs the defaults."""

from __future__ import annotations

import dataclasses

import pytest

from kiln.core.scheduling import (
    InvalidPolicyParams,
    QueuedItem,
    Scheduler,
    make_policy,
    policy_or_defaults,
)
from kiln.core.scheduling.policies import POLICIES


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_constructor_parameter_is_declared_and_its_default_is_in_range(name):
    cls = POLICIES[name]
    fields = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert set(fields) == set(cls.PARAMS)
    for key, default in fields.items():
        assert cls.PARAMS[key].problem(default) is None, (name, key)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("Priority", {"aging_per_minute": "fast"}),
        ("Priority", {"aging_per_minute": None}),
        ("Priority", {"aging_per_minute": float("nan")}),
        ("ShortestPredicted", {"aging": "x"}),
        ("ShortestPredicted", {"backlog_aging": float("inf")}),
        ("Fair", {"prune_every": 0}),
        ("Fair", {"prune_every": 2.0}),
        ("FIFO", {"aging": 1}),
    ],
)
def test_make_policy_refuses_params_of_the_wrong_type_or_range(name, params):
    with pytest.raises(InvalidPolicyParams) as refused:
        make_policy(name, **params)
    assert refused.value.field == next(iter(params))
    policy, error = policy_or_defaults(name, params)
    assert policy == type(policy)()
    assert error is not None and error.field == refused.value.field


def test_a_scheduler_given_bad_stored_params_orders_with_the_defaults_and_says_why():
    items = [QueuedItem(str(i), "g", priority=i % 3, enqueued_at=float(i)) for i in range(20)]
    scheduler = Scheduler("Fair", params={"Fair": {"prune_every": 0}})
    assert scheduler.params_error is not None and scheduler.params_error.field == "prune_every"
    for item in scheduler.order(items, now=30.0):
        scheduler.record_start(item, now=30.0)  # prune_every=0 divided by zero here
    assert scheduler.state.total_scheduled == 20
    scheduler.set_policy("Fair", prune_every=3)
    assert scheduler.params_error is None and scheduler.params["Fair"] == {"prune_every": 3}
