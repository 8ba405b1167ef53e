"""Placement over predicted execution times, and quantiles to expected time and spread."""

import math

import pytest

from kiln.core.prediction import Estimate, Prediction, combine, estimate, quantile_value
from kiln.core.scheduling import (
    InstanceLoad,
    NoInstances,
    UnknownStrategy,
    add_work,
    finish_work,
    place,
    remove_work,
)

QS = (0.1, 0.25, 0.5, 0.75, 0.9)


def test_expected_time_weights_the_median_and_quartiles_as_seed_000_does():
    prediction = Prediction(QS, (1.0, 2.0, 3.0, 5.0, 8.0))
    est = estimate(prediction)
    assert est.expected == pytest.approx(0.7 * 3.0 + 0.15 * 2.0 + 0.15 * 5.0)
    assert est.spread == pytest.approx((5.0 - 2.0) / 1.349)


def test_missing_quartiles_are_interpolated_from_the_quantiles_present():
    prediction = Prediction((0.1, 0.5, 0.9), (1.0, 3.0, 7.0))
    assert quantile_value(prediction, 0.25) == pytest.approx(1.0 + (0.15 / 0.4) * 2.0)
    assert quantile_value(prediction, 0.75) == pytest.approx(3.0 + (0.25 / 0.4) * 4.0)
    assert quantile_value(prediction, 0.99) == 7.0  # clamped, never extrapolated
    assert estimate(Prediction((0.5,), (4.0,))) == Estimate(4.0, 0.0)


def test_queued_expected_times_add_and_spreads_add_in_quadrature():
    load = InstanceLoad("i0")
    for est in (Estimate(3.0, 3.0), Estimate(4.0, 4.0)):
        load = add_work(load, est)
    assert load.expected == pytest.approx(7.0)
    assert load.spread == pytest.approx(5.0)
    assert combine([Estimate(3.0, 3.0), Estimate(4.0, 4.0)]) == Estimate(7.0, 5.0)
    assert load.queued == 2


def test_placement_picks_the_instance_with_the_minimum_expected_completion():
    instances = [
        add_work(InstanceLoad("busy"), Estimate(10.0, 1.0)),
        add_work(add_work(InstanceLoad("two-small"), Estimate(2.0, 1.0)), Estimate(2.0, 1.0)),
        add_work(InstanceLoad("medium"), Estimate(6.0, 0.0)),
    ]
    assert place(Prediction(QS, (1, 1, 1, 1, 1)), instances) == "two-small"
    # Fewest queued tasks; ties go to the least predicted work.
    assert place(Estimate(1.0), instances, "least_loaded") == "medium"


def test_weighted_placement_avoids_an_uncertain_queue_of_equal_expectation():
    instances = [
        InstanceLoad("risky", expected=5.0, variance=25.0, queued=1),
        InstanceLoad("steady", expected=5.5, variance=0.01, queued=1),
    ]
    assert place(Estimate(1.0), instances) == "risky"
    assert place(Estimate(1.0), instances, "weighted", spread_weight=1.0) == "steady"


def test_round_robin_placement_cycles_through_instances_in_id_order():
    instances = [InstanceLoad("b"), InstanceLoad("a"), InstanceLoad("c")]
    assert [place(Estimate(1.0), instances, "round_robin", turn=t) for t in range(4)] == [
        "a",
        "b",
        "c",
        "a",
    ]


def test_ties_go_to_the_shorter_queue_then_the_smaller_id():
    instances = [InstanceLoad("b"), InstanceLoad("a")]
    assert place(Estimate(1.0), instances) == "a"


def test_finishing_work_removes_it_and_corrects_the_instance_with_the_actual_duration():
    slow = add_work(add_work(InstanceLoad("slow"), Estimate(10.0, 1.0)), Estimate(10.0, 1.0))
    fast = add_work(add_work(InstanceLoad("fast"), Estimate(10.0, 1.0)), Estimate(10.0, 1.0))
    slow = finish_work(slow, Estimate(10.0, 1.0), actual=30.0)
    fast = finish_work(fast, Estimate(10.0, 1.0), actual=10.0)
    assert slow.queued == 1 and slow.expected == pytest.approx(10.0)
    assert slow.speed_factor > 1.0 and fast.speed_factor == pytest.approx(1.0)
    # Same predicted queue, but the slow one is now charged for its slowness.
    assert place(Estimate(1.0), [slow, fast]) == "fast"
    assert slow.completion(Estimate(1.0)).expected == pytest.approx(11.0 * slow.speed_factor)


def test_an_emptied_queue_holds_exactly_zero_work():
    load = add_work(add_work(InstanceLoad("i"), Estimate(0.1, 0.3)), Estimate(0.2, 0.7))
    load = remove_work(remove_work(load, Estimate(0.1, 0.3)), Estimate(0.2, 0.7))
    assert (load.expected, load.variance, load.queued) == (0.0, 0.0, 0)
    assert remove_work(load, Estimate(5.0)).expected == 0.0


def test_unknown_strategy_and_no_instances_are_value_errors():
    with pytest.raises(UnknownStrategy, match="min_expected_completion"):
        place(Estimate(1.0), [InstanceLoad("a")], "probabilistic")
    with pytest.raises(NoInstances):
        place(Estimate(1.0), [])
    assert issubclass(UnknownStrategy, ValueError)


def test_load_spread_is_the_square_root_of_variance():
    assert InstanceLoad("a", variance=9.0).spread == 3.0
    assert math.isclose(InstanceLoad("a").completion(Estimate(2.0, 2.0)).spread, 2.0)
