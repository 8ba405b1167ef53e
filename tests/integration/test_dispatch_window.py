"""An ordered dispatch ranks the longest-waiting ready tasks beside the best by priority, so
FIFO and an aging policy reach an old low-priority task however large the backlog of
higher-priority work queued after it (the window was the best by priority alone, and such a
task waited as long as that backlog lasted: seen as a starved victim in the Priority-aging
acceptance test)."""

from __future__ import annotations

import datetime as dt

import pytest

import tests.handlers  # noqa: F401 - registers the handlers the definitions name
from kiln.app.runtime import Kiln
from kiln.core.clock import utcnow
from kiln.store.db import aware
from kiln.workers.scheduling_hooks import scheduler_order
from tests.conftest import wait_for


def old_task_then_backlog(kiln: Kiln, backlog: int) -> int:
    """One priority-0 task, then (once it has waited 20 ms) ``backlog`` priority-5 tasks."""
    old = kiln.submit({"name": "old", "tasks": [{"name": "low", "handler": "noop"}]})
    task = kiln.workflow(old)["tasks"][0]
    waited = dt.timedelta(milliseconds=20)
    wait_for(lambda: utcnow() - aware(task["ready_at"]) > waited, what="20 ms of waiting")
    kiln.submit(
        {
            "name": "backlog",
            "tasks": [{"name": f"t{i}", "handler": "noop", "priority": 5} for i in range(backlog)],
        }
    )
    return task["id"]


@pytest.mark.parametrize(
    ("policy", "params"),
    [
        ("FIFO", None),
        # 10**6 levels a minute: 20 ms of waiting outweigh 5 levels of priority many times.
        ("Priority", {"aging_per_minute": 1e6}),
    ],
)
def test_an_old_low_priority_task_behind_a_backlog_larger_than_the_batch_goes_first_when_the_policy_says_so(
    kiln, policy, params
):
    kiln.scheduler.set_policy(policy, params)
    old = old_task_then_backlog(kiln, backlog=40)
    leased = kiln.dispatch(4, order=scheduler_order(kiln))
    assert len(leased) == 4
    assert leased[0].task_id == old


def test_without_aging_the_backlog_of_higher_priority_still_goes_first(kiln):
    kiln.scheduler.set_policy("Priority", {"aging_per_minute": 0})
    old = old_task_then_backlog(kiln, backlog=40)
    leased = kiln.dispatch(4, order=scheduler_order(kiln))
    assert len(leased) == 4
    assert old not in [d.task_id for d in leased]


def test_a_dispatch_without_a_policy_leases_the_best_by_priority_then_age(kiln):
    old = old_task_then_backlog(kiln, backlog=6)
    leased = [d.task_id for d in kiln.dispatch(10)]
    assert len(leased) == 7
    assert leased[-1] == old


def test_the_schedule_next_preview_ranks_the_oldest_too_beyond_its_window(kiln):
    kiln.scheduler.set_policy("FIFO")
    old = old_task_then_backlog(kiln, backlog=2100)  # the preview ranks 2,000 by priority
    preview = kiln.scheduler.schedule_next(limit=3)
    assert preview["next_task_id"] == old


def test_under_a_policy_that_reads_no_run_times_the_running_set_does_not_grow_pass_after_pass(
    kiln,
):
    # FIFO reads no finishes, so nothing would ever leave the running set the self-tuning
    # keeps; it grew to 4,096 items, which every arrival walked: a 1,000-task pass took a
    # second of the controller's CPU and held the workers idle (W1 drain 800/s).
    kiln.submit(
        {"name": "many", "tasks": [{"name": f"t{i}", "handler": "noop"} for i in range(50)]}
    )
    service = kiln.scheduler.service
    for _ in range(5):
        assert len(kiln.dispatch(10, order=scheduler_order(kiln))) == 10
        assert len(service.scheduler.state.running_since) == 10
        service.sync()
        assert service.scheduler.state.running_since == {}


@pytest.mark.parametrize(("policy", "kept"), [("FIFO", False), ("LateBudget", True)])
def test_only_a_policy_that_reads_run_times_keeps_fifos_replay_of_arrivals_in_the_stored_state(
    kiln, policy, kept
):
    # Under FIFO no finish is ever read, so the replay of arrivals never advanced: 16,384 of
    # them (with their predicted waits) made the stored state a megabyte of JSON, which a
    # controller decoded five times a second and rewrote twice.
    from kiln.store.scheduler_state import load_txn

    kiln.scheduler.set_policy(policy)
    kiln.submit(
        {"name": "many", "tasks": [{"name": f"t{i}", "handler": "noop"} for i in range(40)]}
    )
    service = kiln.scheduler.service
    service.persist_every_s = 0.0
    for _ in range(4):
        assert len(kiln.dispatch(10, order=scheduler_order(kiln))) == 10
        service.sync()
    stored = kiln.read(load_txn).state
    assert bool(stored.fifo_arrivals) is kept
    assert bool(stored.fifo_waits) is kept
    assert len(stored.recent_starts) == 40  # what every policy measures is kept
