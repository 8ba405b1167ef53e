"""The self-tuning policies (Boost, SEPTGuard, ShortestExpected) and the O(log n) ready queue:
their knobs are measured from the queue, nothing depends on the unit of time, and the queue
picks in exactly the order the controller ranks."""

from __future__ import annotations

import math
import random

import pytest

from kiln.core.prediction import Prediction
from kiln.core.scheduling import POLICY_NAMES, QueuedItem, Scheduler, SchedulerState, tuning
from kiln.core.scheduling.queue import ReadyQueue


def spread(expected: float) -> Prediction:
    return Prediction((0.1, 0.5, 0.9), (expected * 0.3, expected, expected * 2.5))


def replay(policy: str, scale: float = 1.0, jobs: int = 600, seed: int = 3, snapshot_at=None):
    """A one-instance queue at ~97 % load with predicted sizes, through a ReadyQueue.
    Returns the start order, and (items waiting, now, a copy of the scheduler) at the first
    start after the ``snapshot_at``-th that finds eight items waiting, before it is taken."""
    rng = random.Random(seed)
    scheduler = Scheduler(policy)
    queue = ReadyQueue(scheduler)
    t, arrivals = 0.0, []
    for index in range(jobs):
        t += rng.expovariate(1.1) * scale
        size = rng.lognormvariate(0, 1) * scale / math.exp(0.5)
        arrivals.append((t, f"{index:06d}", size))
    started: list[str] = []
    snapshot = None
    now, free_at, pending = 0.0, 0.0, list(arrivals)
    running: tuple[QueuedItem, float] | None = None
    while pending or len(queue) or running:
        next_arrival = pending[0][0] if pending else math.inf
        if running and free_at <= next_arrival:
            now = free_at
            scheduler.record_finish(running[0], running[1], now)
            running = None
        else:
            now, item_id, size = pending.pop(0)
            item = QueuedItem(item_id, None, 0, now, predicted=spread(size * rng.uniform(0.5, 2)))
            queue.push(item, now)
            sizes[item_id] = size
        if running is None and len(queue):
            ready = snapshot is None and snapshot_at is not None and len(started) >= snapshot_at
            if ready and len(queue) >= 8:
                snapshot = (list(queue), now, Scheduler(policy, SchedulerState.from_dict(
                    scheduler.state.to_dict())))  # fmt: skip
            item = queue.pop(now)
            scheduler.record_start(item, now)
            started.append(item.id)
            running, free_at = (item, sizes[item.id]), now + sizes[item.id]
    return started, snapshot


sizes: dict[str, float] = {}


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_the_ready_queue_picks_exactly_in_the_order_the_scheduler_ranks_a_recorded_queue(policy):
    _, (items, now, scheduler) = replay(policy, snapshot_at=400)
    assert len(items) > 5
    expected = [i.id for i in scheduler.order(items, now)]
    queue = ReadyQueue(scheduler)
    for item in items:
        queue.push(item)
    picked = []
    while len(queue):
        # Each pick is what the controller would dispatch first from what is left.
        picked.append(queue.pop(now).id)
    assert picked == expected


def test_septguard_runs_items_past_their_fifo_deadline_first_oldest_first_then_the_shortest():
    _, (items, _, scheduler) = replay("SEPTGuard", snapshot_at=300)
    policy, state = scheduler.policy, scheduler.state
    deadlines = sorted(policy.deadline(i, state) for i in items)
    now = deadlines[len(deadlines) // 2]  # half of them are past their deadline
    urgent = [i for i in items if policy.deadline(i, state) <= now]
    ordered = scheduler.order(items, now)
    assert 0 < len(urgent) < len(items)
    assert ordered[: len(urgent)] == sorted(urgent, key=lambda i: policy.deadline(i, state))
    rest = ordered[len(urgent) :]
    assert rest == sorted(rest, key=lambda i: policy.rank_key(i, state))
    queue = ReadyQueue(scheduler)
    for item in items:
        queue.push(item)
    assert [queue.pop(now).id for _ in items] == [i.id for i in ordered]
    # The patience is FIFO's: at least guard × FIFO's p99, more for an item FIFO would have
    # kept waiting longer.
    assert all(policy.patience(i, state) >= policy.guard * state.fifo_p99 for i in items)


@pytest.mark.parametrize("policy", ["Boost", "SEPTGuard", "LateBudget", "ShortestExpected"])
def test_the_order_does_not_depend_on_the_unit_of_time(policy):
    seconds, _ = replay(policy, scale=1.0)
    kiloseconds, _ = replay(policy, scale=1000.0)
    assert seconds == kiloseconds
    assert seconds != sorted(seconds)  # not FIFO: the predictions are used


def test_the_decay_rate_is_fcfs_tail_rate_for_exponential_sizes():
    # M/M/1: P[T > t] = exp(−(μ − λ) t), so γ = (1 − ρ) / mean size.
    rng = random.Random(1)
    sizes = [rng.expovariate(1 / 2.0) for _ in range(20_000)]
    mean = sum(sizes) / len(sizes)
    gamma = tuning.decay_rate(0.4, sizes)  # ρ = 0.8
    assert gamma == pytest.approx((1 - 0.4 * mean) / mean, rel=0.05)
    assert tuning.decay_rate(1.0, sizes) == pytest.approx(tuning.MIN_THETA / mean)


def test_the_boost_is_larger_for_shorter_work_and_scales_with_time():
    gamma = 0.1
    short, long = tuning.boost(gamma, [1.0, 2.0]), tuning.boost(gamma, [20.0, 40.0])
    assert short > long > 0
    assert tuning.boost(gamma / 1000, [1000.0, 2000.0]) == pytest.approx(short * 1000)
    # Huge γ·S neither overflows nor goes negative.
    assert 0 <= tuning.boost(gamma, [1e6]) < 1e-6


def test_tuning_is_measured_from_starts_finishes_and_arrivals():
    scheduler = Scheduler("SEPTGuard")
    assert scheduler.state.boost_gamma is None
    _, (items, now, tuned) = replay("SEPTGuard", jobs=600, snapshot_at=200)
    state = tuned.state
    assert state.boost_gamma is not None and state.boost_gamma > 0
    assert state.fifo_p99 is not None and state.fifo_p99 > 0
    assert tuning.servers(state) == 1
    assert 0.5 < tuning.arrival_rate(state) < 1.5  # arrivals at 1.1 per second
    assert all(i.id in state.fifo_waits for i in items)
    restored = SchedulerState.from_dict(state.to_dict())
    assert restored.to_dict() == state.to_dict()


def test_a_policy_switched_on_at_run_time_is_already_tuned():
    _, (items, now, scheduler) = replay("FIFO", jobs=600, snapshot_at=200)
    assert scheduler.state.fifo_p99 is not None
    scheduler.set_policy("SEPTGuard")
    assert scheduler.policy.patience(items[0], scheduler.state) is not None
    assert scheduler.explain(items, now)[0].reason.startswith("SEPTGuard")


def test_without_measurements_septguard_is_shortest_expected_first_and_boost_is_fifo():
    items = [
        QueuedItem("a", None, 0, 0.0, predicted=spread(10)),
        QueuedItem("b", None, 0, 1.0, predicted=spread(1)),
        QueuedItem("c", None, 0, 2.0),
    ]
    assert [i.id for i in Scheduler("SEPTGuard").order(items, 5.0)] == ["b", "a", "c"]
    assert [i.id for i in Scheduler("Boost").order(items, 5.0)] == ["a", "b", "c"]
    assert [i.id for i in Scheduler("ShortestExpected").order(items, 5.0)] == ["b", "a", "c"]


def test_fifo_p99_counts_the_arrivals_the_exact_replay_has_not_reached():
    # A long item is held back while 40 short ones run: FIFO would have run it first, and
    # every short one would have waited behind it. The exact replay stops at the long one
    # (its run time is unknown), so FIFO's p99 must come from the estimated responses.
    state = SchedulerState()
    tuning.note_arrival(state, "long", 0.0, 0.0, 0.0, expected=100.0)
    for index in range(40):
        t = 1.0 + index
        tuning.note_arrival(state, f"s{index}", t, 100.0, t, expected=1.0)
        tuning.note_start(state, f"s{index}", t, 1.0)
        tuning.note_finish(state, f"s{index}", 1.0)
    assert state.fifo_responses == []
    assert state.fifo_p99 is not None and state.fifo_p99 >= 95.0
    # Once the long item's run time is known, the exact replay takes over.
    tuning.note_start(state, "long", 41.0, 100.0)
    tuning.note_finish(state, "long", 100.0)
    assert len(state.fifo_responses) == 41
    assert min(state.fifo_responses[1:]) >= 60.0
