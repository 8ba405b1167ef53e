"""Queue-ordering policies: pure functions over plain data."""

import pytest

from kiln.core.prediction import Prediction
from kiln.core.scheduling import (
    POLICY_NAMES,
    Fair,
    Priority,
    QueuedItem,
    RoundRobin,
    Scheduler,
    SchedulerState,
    ShortestPredicted,
    UnknownPolicy,
    make_policy,
)


def secs(value: float) -> Prediction:
    return Prediction((0.25, 0.5, 0.75), (value, value, value), method="learned")


def item(id, group="g", priority=0, at=0.0, predicted=None, **kw) -> QueuedItem:
    return QueuedItem(
        id=id, group=group, priority=priority, enqueued_at=at, predicted=predicted, **kw
    )


def ids(items):
    return [i.id for i in items]


def run_until_started(scheduler, target_id, arrivals, runtime):
    """Serve one item at a time; ``arrivals(t)`` yields the items arriving at time t.
    Returns the time ``target_id`` started."""
    queue, now = [], 0.0
    for step in range(100_000):
        queue.extend(arrivals(step, now))
        chosen = scheduler.next(queue, now)
        queue.remove(chosen)
        scheduler.record_start(chosen, now)
        if chosen.id == target_id:
            return now
        now += runtime
        scheduler.record_finish(chosen, runtime, now)
    raise AssertionError(f"{target_id} never started")


def test_policy_names_are_exactly_the_documented_ones():
    assert POLICY_NAMES == (
        "FIFO",
        "RoundRobin",
        "Priority",
        "Fair",
        "ShortestPredicted",
        "ShortestExpected",
        "Boost",
        "SEPTGuard",
        "LateBudget",
    )


def test_fifo_runs_the_oldest_item_first_whatever_its_priority_or_size():
    items = [item("b", at=2, priority=9), item("a", at=1, predicted=secs(100)), item("c", at=3)]
    assert ids(Scheduler("FIFO").order(items, now=10)) == ["a", "b", "c"]


def test_priority_policy_runs_higher_priority_first_then_oldest():
    items = [
        item("low", priority=1, at=0),
        item("high", priority=5, at=2),
        item("mid", priority=3, at=1),
        item("high-old", priority=5, at=1),
    ]
    assert ids(Scheduler("Priority").order(items, now=2)) == ["high-old", "high", "mid", "low"]


def test_priority_policy_ages_low_priority_work_so_it_cannot_starve():
    scheduler = Scheduler("Priority", params={"Priority": {"aging_per_minute": 1.0}})

    def arrivals(step, now):
        first = [item("low", priority=0, at=0.0)] if step == 0 else []
        return first + [item(f"high-{step}", priority=5, at=now)]

    started = run_until_started(scheduler, "low", arrivals, runtime=1.0)
    # Five priority levels at one level per minute: at most ~5 minutes behind fresh work.
    assert 0 < started <= 5 * 60 + 2


def test_shortest_predicted_runs_the_shortest_prediction_first():
    items = [
        item("long", at=0, predicted=secs(30)),
        item("short", at=1, predicted=secs(1)),
        item("mid", at=2, predicted=secs(5)),
    ]
    assert ids(Scheduler("ShortestPredicted").order(items, now=2)) == ["short", "mid", "long"]


def test_shortest_predicted_ages_long_work_so_it_runs_within_a_bounded_wait():
    aging = 0.05
    scheduler = Scheduler("ShortestPredicted", params={"ShortestPredicted": {"aging": aging}})

    def arrivals(step, now):
        first = [item("long", at=0.0, predicted=secs(60))] if step == 0 else []
        return first + [item(f"short-{step}", at=now, predicted=secs(1))]

    started = run_until_started(scheduler, "long", arrivals, runtime=1.0)
    assert 0 < started <= (60 - 1) / aging + 1


def test_shortest_predicted_starvation_limit_runs_old_work_oldest_first():
    policy = ShortestPredicted(aging=0.0, starvation_limit=10.0)
    items = [item("long", at=0, predicted=secs(100)), item("short", at=19, predicted=secs(1))]
    assert ids(policy.order(items, now=20, state=SchedulerState())) == ["long", "short"]


def test_shortest_predicted_backlog_guard_runs_work_that_waited_longer_than_the_backlog():
    # 30 s queued in all; "long" has waited 100 s, more than a FIFO newcomer would wait now.
    policy = ShortestPredicted(aging=0.0, backlog_factor=1.0, backlog_aging=0.5)
    items = [item("long", at=0, predicted=secs(20)), item("short", at=99, predicted=secs(10))]
    assert ids(policy.order(items, now=100, state=SchedulerState())) == ["long", "short"]


def test_shortest_predicted_backlog_guard_leaves_work_alone_within_the_backlog():
    policy = ShortestPredicted(aging=0.0, backlog_factor=1.0, backlog_aging=0.5)
    items = [item("long", at=0, predicted=secs(20)), item("short", at=19, predicted=secs(10))]
    assert ids(policy.order(items, now=20, state=SchedulerState())) == ["short", "long"]


def test_shortest_predicted_backlog_guard_can_be_turned_off():
    policy = ShortestPredicted(aging=0.0, backlog_factor=None, backlog_aging=0.5)
    items = [item("long", at=0, predicted=secs(20)), item("short", at=99, predicted=secs(10))]
    assert ids(policy.order(items, now=100, state=SchedulerState())) == ["short", "long"]


def test_shortest_predicted_backlog_guard_bounds_the_wait_behind_a_stream_of_short_work():
    # Without linear aging only the guard can let "long" through: it must start once it has
    # waited past the backlog plus (60 − 1) / backlog_aging seconds of catching up.
    policy = {"aging": 0.0, "backlog_factor": 1.0, "backlog_aging": 0.5}
    scheduler = Scheduler("ShortestPredicted", params={"ShortestPredicted": policy})

    def arrivals(step, now):
        first = [item("long", at=0.0, predicted=secs(60))] if step == 0 else []
        return first + [item(f"short-{step}", at=now, predicted=secs(1))]

    started = run_until_started(scheduler, "long", arrivals, runtime=1.0)
    assert 60 < started <= 61 + (60 - 1) / 0.5 + 1


def test_shortest_predicted_explains_the_rank_the_backlog_guard_gave():
    policy = {"aging": 0.0, "backlog_factor": 1.0, "backlog_aging": 0.5}
    scheduler = Scheduler("ShortestPredicted", params={"ShortestPredicted": policy})
    items = [item("long", at=0, predicted=secs(20)), item("short", at=99, predicted=secs(10))]
    first = scheduler.explain(items, now=100)[0]
    # 100 s waited, 30 s queued: 20 − 0.5 × 70 = −15.
    assert first.item.id == "long" and "rank -15.000" in first.reason


def test_shortest_predicted_ranks_unpredicted_items_at_the_median_size():
    items = [
        item("a", predicted=secs(1)),
        item("b", predicted=secs(9)),
        item("c", predicted=secs(5)),
        item("unknown", at=0),
    ]
    assert ids(Scheduler("ShortestPredicted").order(items, now=0))[:2] == ["a", "c"]


def test_shortest_predicted_spread_penalty_prefers_the_surer_of_two_equal_medians():
    sure = item("sure", predicted=Prediction((0.25, 0.5, 0.75), (4.9, 5, 5.1)))
    unsure = item("unsure", predicted=Prediction((0.25, 0.5, 0.75), (1, 5, 9)))
    policy = ShortestPredicted(spread_penalty=1.0)
    assert ids(policy.order([unsure, sure], 0, SchedulerState())) == ["sure", "unsure"]


def test_fair_runs_the_group_with_the_lowest_vruntime():
    state = SchedulerState(vruntimes={"a": 5.0, "b": 1.0})
    items = [item("a1", group="a", at=0), item("b1", group="b", at=1)]
    assert ids(Fair().order(items, now=1, state=state)) == ["b1", "a1"]


def test_fair_newcomer_starts_at_the_current_minimum_vruntime():
    scheduler = Scheduler("Fair")
    old = item("old", group="old", at=0)
    for step in range(3):
        scheduler.record_start(old, step)
        scheduler.record_finish(old, 10.0, step + 1)
    assert scheduler.state.vruntimes["old"] == pytest.approx(30.0)
    newcomer = item("new", group="new", at=5)
    scheduler.record_start(newcomer, 5)
    # min_vruntime only moved with the old group's starts: the newcomer gets no 30 s credit.
    assert scheduler.state.vruntimes["new"] == pytest.approx(scheduler.state.min_vruntime)
    assert scheduler.state.min_vruntime == pytest.approx(20.0)


def test_fair_vruntime_grows_slower_for_higher_priority():
    policy, state = Fair(), SchedulerState()
    hi, lo = item("h", group="hi", priority=4), item("l", group="lo", priority=0)
    for it in (hi, lo):
        policy.record_start(it, 0, state)
        policy.record_finish(it, 10.0, 10, state)
    assert state.vruntimes["hi"] < state.vruntimes["lo"]
    assert state.vruntimes["lo"] / state.vruntimes["hi"] == pytest.approx(1.25**4)


def test_fair_charges_predicted_runtime_at_start_and_corrects_it_with_the_actual():
    policy, state = Fair(), SchedulerState()
    a = item("a1", group="a", predicted=secs(4))
    policy.record_start(a, 0, state)
    assert state.vruntimes["a"] == pytest.approx(4.0)
    policy.record_finish(a, 6.0, 6, state)
    assert state.vruntimes["a"] == pytest.approx(6.0)


def test_round_robin_interleaves_groups_one_item_per_turn():
    items = [
        item("a1", group="a", at=0),
        item("a2", group="a", at=1),
        item("a3", group="a", at=2),
        item("b1", group="b", at=3),
        item("c1", group="c", at=4),
        item("c2", group="c", at=5),
    ]
    assert ids(Scheduler("RoundRobin").order(items, now=5)) == ["a1", "b1", "c1", "a2", "c2", "a3"]


def test_round_robin_passes_the_turn_when_the_quantum_is_used_up():
    scheduler = Scheduler("RoundRobin", state=SchedulerState(quantum_micros=1_000_000))
    items = [item("a1", group="a", at=0), item("a2", group="a", at=1), item("b1", group="b", at=2)]
    first = scheduler.next(items, 0)
    assert first.id == "a1"
    scheduler.record_start(first, 0)
    scheduler.record_finish(first, 0.5, 0.5)  # half the quantum: group a keeps the turn
    assert scheduler.next(items[1:], 0.5).id == "a2"
    scheduler.record_start(items[1], 0.5)
    scheduler.record_finish(items[1], 0.6, 1.1)  # quantum exhausted
    assert scheduler.next([item("a3", group="a", at=3), items[2]], 1.1).id == "b1"
    assert scheduler.state.preemptions == 1


def test_switching_policy_at_run_time_reorders_what_is_already_queued():
    items = [
        item("long", at=0, priority=0, predicted=secs(50)),
        item("short", at=1, priority=0, predicted=secs(1)),
        item("urgent", at=2, priority=9, predicted=secs(20)),
    ]
    scheduler = Scheduler("FIFO")
    assert ids(scheduler.order(items, 2)) == ["long", "short", "urgent"]
    scheduler.record_start(items[0], 2)
    scheduler.set_policy("ShortestPredicted")
    assert ids(scheduler.order(items, 2)) == ["short", "urgent", "long"]
    scheduler.set_policy("Priority")
    assert ids(scheduler.order(items, 2)) == ["urgent", "long", "short"]
    assert scheduler.stats(active=3)["total_scheduled"] == 1


def test_unknown_policy_raises_a_value_error_naming_the_valid_policies():
    scheduler = Scheduler("Fair")
    with pytest.raises(UnknownPolicy) as excinfo:
        scheduler.set_policy("Lottery")
    assert isinstance(excinfo.value, ValueError)
    assert "Lottery" in str(excinfo.value) and "ShortestPredicted" in str(excinfo.value)
    assert scheduler.policy_name == "Fair"
    with pytest.raises(UnknownPolicy):
        make_policy("fifo")


def test_stats_have_the_kernel_scheduler_shape_and_count_context_switches():
    scheduler = Scheduler("RoundRobin", state=SchedulerState(quantum_micros=5000))
    for n, group in enumerate(["a", "a", "b", "a"]):
        scheduler.record_start(item(f"x{n}", group=group), n)
    assert scheduler.stats(active=2) == {
        "total_scheduled": 4,
        "context_switches": 2,
        "preemptions": 0,
        "active": 2,
        "active_processes": 2,
        "policy": "RoundRobin",
        "quantum_micros": 5000,
    }


def test_explain_is_a_dry_run_of_what_runs_next_and_why():
    scheduler = Scheduler("ShortestPredicted")
    items = [item("long", at=0, predicted=secs(30)), item("short", at=5, predicted=secs(2))]
    before = scheduler.state.to_dict()
    decisions = scheduler.explain(items, now=10)
    assert [(d.position, d.item.id) for d in decisions] == [(0, "short"), (1, "long")]
    assert "predicted size 2.000 s" in decisions[0].reason
    assert scheduler.state.to_dict() == before
    for name in POLICY_NAMES:
        scheduler.set_policy(name)
        assert scheduler.explain(items, now=10)[0].reason.startswith(name)


def test_scheduler_state_round_trips_through_plain_data():
    scheduler = Scheduler("Fair")
    scheduler.record_start(item("a", group="a", predicted=secs(3)), 0)
    restored = SchedulerState.from_dict(scheduler.state.to_dict())
    assert restored == scheduler.state


def test_priority_aging_can_be_tuned_off():
    policy = Priority(aging_per_minute=0.0)
    items = [item("old-low", priority=0, at=0), item("new-high", priority=1, at=10_000)]
    assert ids(policy.order(items, 10_000, SchedulerState())) == ["new-high", "old-low"]


def test_round_robin_with_no_groups_is_fifo():
    items = [item("b", group=None, at=2), item("a", group=None, at=1)]
    assert ids(RoundRobin().order(items, 3, SchedulerState())) == ["a", "b"]
