"""LateBudget: shortest expected first, FIFO-relative deadlines, and a budget of items left
late on purpose, chosen among the largest predicted; the ready queue's heaps and the
controller's sort make the same choices."""

from __future__ import annotations

import pytest

from kiln.core.prediction import Prediction
from kiln.core.scheduling import QueuedItem, Scheduler, SchedulerState
from kiln.core.scheduling.queue import ReadyQueue
from tests.unit.test_scheduling_self_tuning import replay


def sized(item_id: str, at: float, expected: float) -> QueuedItem:
    return QueuedItem(item_id, None, 0, at, predicted=Prediction((0.5,), (expected,)))


def tuned(starts: int = 1000) -> SchedulerState:
    """FIFO's p99 measured at 10 s; recent predictions 1..100 s, so 91 s and more is among
    the largest 10 %; ``starts`` items started so far (the budget is 0.8 % of them)."""
    pairs = [(float(s), float(s)) for s in range(1, 101)]
    return SchedulerState(fifo_p99=10.0, total_scheduled=starts, recent_pairs=pairs)


def ids(items) -> list[str]:
    return [i.id for i in items]


def popped(scheduler: Scheduler, items: list[QueuedItem], now: float) -> list[str]:
    queue = ReadyQueue(scheduler)
    for item in items:
        queue.push(item)
    return [queue.pop(now).id for _ in items]


def test_a_past_due_item_among_the_largest_is_left_late_while_a_smaller_one_runs_first():
    items = [
        sized("big-old", at=0, expected=95),
        sized("mid-old", at=1, expected=50),
        sized("small-new", at=45, expected=2),
        sized("big-new", at=46, expected=99),
    ]
    scheduler = Scheduler("LateBudget", tuned())
    # At 50 s the two oldest are past their 10 s deadline: the 50 s one runs first, the
    # 95 s one is excused and takes its place by expected size, after the small new one.
    assert ids(scheduler.order(items, 50.0)) == ["mid-old", "small-new", "big-old", "big-new"]
    assert set(scheduler.state.excused) == {"big-old"}
    assert scheduler.policy.deadline(items[0], scheduler.state) is None


def test_no_more_than_the_late_share_of_recent_starts_is_excused_earliest_deadline_first():
    big = [sized(f"big{k:02d}", at=k, expected=91 + k / 10) for k in range(12)]
    small = [sized("small", at=40, expected=1)]
    scheduler = Scheduler("LateBudget", tuned(starts=1000))
    ordered = ids(scheduler.order(big + small, 50.0))
    # 0.8 % of 1,000 starts: eight excuses, spent on the first eight to fall due.
    assert sorted(scheduler.state.excused) == [f"big{k:02d}" for k in range(8)]
    assert ordered == ["big08", "big09", "big10", "big11", "small"] + [
        f"big{k:02d}" for k in range(8)
    ]


def test_the_budget_frees_as_starts_pass_and_an_excuse_ends_when_the_item_starts():
    state = tuned(starts=1000)
    state.excused_at = [0] * 8  # eight excuses, spent 1,000 starts ago
    late = sized("late", at=0, expected=95)
    scheduler = Scheduler("LateBudget", state)
    assert ids(scheduler.order([late], 50.0)) == ["late"]
    assert "late" not in state.excused  # the budget was spent: it runs as urgent
    state.total_scheduled = 3000  # those eight left the window
    scheduler.order([late], 50.0)
    assert "late" in state.excused
    scheduler.record_start(late, 60.0)
    assert "late" not in state.excused


def test_a_young_queue_has_no_budget_and_no_idea_of_large_so_nothing_is_excused():
    items = [sized("big", at=0, expected=95), sized("small", at=40, expected=1)]
    few_starts = Scheduler("LateBudget", tuned(starts=50))
    assert ids(few_starts.order(items, 50.0)) == ["big", "small"]
    unmeasured = Scheduler("LateBudget", SchedulerState(fifo_p99=10.0, total_scheduled=1000))
    assert ids(unmeasured.order(items, 50.0)) == ["big", "small"]
    assert not few_starts.state.excused and not unmeasured.state.excused


def test_explain_keeps_no_excuse_it_makes():
    items = [sized("big", at=0, expected=95), sized("small", at=40, expected=1)]
    scheduler = Scheduler("LateBudget", tuned())
    decisions = scheduler.explain(items, 50.0)
    assert [d.item.id for d in decisions] == ["small", "big"]
    assert "left late" in decisions[1].reason
    assert not scheduler.state.excused


def test_the_ready_queue_excuses_and_picks_exactly_as_the_controller_sorts_a_recorded_queue():
    _, (items, _, recorded) = replay("LateBudget", snapshot_at=300)
    policy = recorded.policy
    deadlines = sorted(policy.deadline(i, recorded.state) for i in items)
    now = deadlines[-1] + 1.0  # every item is past its deadline
    state = recorded.state.to_dict()
    state["total_scheduled"] = 10_000  # room for a few excuses
    sorting = Scheduler("LateBudget", SchedulerState.from_dict(state))
    heaps = Scheduler("LateBudget", SchedulerState.from_dict(state))
    expected = ids(sorting.order(items, now))
    assert popped(heaps, items, now) == expected
    assert sorting.state.excused and sorting.state.excused == heaps.state.excused


@pytest.mark.parametrize("scale", [0.001, 1000.0])
def test_the_order_does_not_depend_on_the_unit_of_time(scale):
    seconds, _ = replay("LateBudget", scale=1.0)
    other, _ = replay("LateBudget", scale=scale)
    assert seconds == other
    assert seconds != sorted(seconds)
