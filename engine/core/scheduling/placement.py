"""Placement: which instance a task should queue on, from predicted execution times.

Each instance's queue is summarised by :class:`InstanceLoad`: the expected work queued on it
(expected times add) and its variance (spreads add in quadrature), plus a speed factor learnt
from actual durations (an instance that runs 20 % slower than predicted gets a factor of ~1.2,
which scales both its queue and the new task). Loads are immutable; ``add_work``,
``remove_work`` and ``finish_work`` return the updated value.

Strategies:

- ``min_expected_completion`` (default): smallest corrected expected completion of the task.
- ``weighted``: smallest ``expected completion + spread_weight · spread``, i.e. risk-averse.
- ``round_robin``: instances in id order, by the caller's turn counter.
- ``least_loaded``: fewest queued tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kiln.core.prediction.estimate import Estimate, estimate
from kiln.core.prediction.types import Prediction

STRATEGIES = ("min_expected_completion", "weighted", "round_robin", "least_loaded")


class UnknownStrategy(ValueError):
    """Unknown placement strategy; expected min_expected_completion, weighted, round_robin or
    least_loaded."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"unknown placement strategy {name!r}; expected one of {', '.join(STRATEGIES)}"
        )


class NoInstances(ValueError):
    """No instance to place the task on."""


@dataclass(frozen=True)
class InstanceLoad:
    """Work queued on one instance (including the running task), in predicted seconds."""

    id: str
    expected: float = 0.0
    variance: float = 0.0
    queued: int = 0
    speed_factor: float = 1.0

    @property
    def spread(self) -> float:
        return math.sqrt(self.variance)

    def completion(self, task: Estimate) -> Estimate:
        """When ``task`` would finish if queued here now, corrected by the speed factor."""
        return Estimate(
            expected=(self.expected + task.expected) * self.speed_factor,
            spread=math.sqrt(self.variance + task.variance) * self.speed_factor,
        )


def as_estimate(task: Prediction | Estimate) -> Estimate:
    return task if isinstance(task, Estimate) else estimate(task)


def add_work(load: InstanceLoad, task: Prediction | Estimate) -> InstanceLoad:
    est = as_estimate(task)
    return replace(
        load,
        expected=load.expected + est.expected,
        variance=load.variance + est.variance,
        queued=load.queued + 1,
    )


def remove_work(load: InstanceLoad, task: Prediction | Estimate) -> InstanceLoad:
    """Take a task's predicted work off the queue (cancelled, moved, or finished)."""
    est = as_estimate(task)
    queued = max(load.queued - 1, 0)
    if queued == 0:
        # Float sums drift; an empty queue is exactly zero work.
        return replace(load, expected=0.0, variance=0.0, queued=0)
    return replace(
        load,
        expected=max(load.expected - est.expected, 0.0),
        variance=max(load.variance - est.variance, 0.0),
        queued=queued,
    )


def finish_work(
    load: InstanceLoad, task: Prediction | Estimate, actual: float, smoothing: float = 0.2
) -> InstanceLoad:
    """Remove a finished task and learn from its actual duration (seconds).

    The speed factor moves towards ``actual / expected`` by ``smoothing`` (an exponentially
    weighted mean), so an instance that is consistently slower or faster than predicted is
    charged accordingly for everything queued on it.
    """
    est = as_estimate(task)
    updated = remove_work(load, est)
    if est.expected > 0 and actual >= 0:
        ratio = min(max(actual / est.expected, 0.1), 10.0)
        updated = replace(
            updated, speed_factor=load.speed_factor + smoothing * (ratio - load.speed_factor)
        )
    return updated


def place(
    task: Prediction | Estimate,
    instances: Sequence[InstanceLoad],
    strategy: str = "min_expected_completion",
    *,
    spread_weight: float = 1.0,
    turn: int = 0,
) -> str:
    """The id of the instance ``task`` should queue on. Ties go to the shorter queue, then
    the smaller id, so placement is deterministic."""
    if strategy not in STRATEGIES:
        raise UnknownStrategy(strategy)
    if not instances:
        raise NoInstances("cannot place a task: no instances")
    if strategy == "round_robin":
        ordered = sorted(instances, key=lambda i: i.id)
        return ordered[turn % len(ordered)].id
    if strategy == "least_loaded":
        return min(instances, key=lambda i: (i.queued, i.expected * i.speed_factor, i.id)).id
    est = as_estimate(task)
    weight = spread_weight if strategy == "weighted" else 0.0

    def score(load: InstanceLoad) -> tuple[float, int, str]:
        done = load.completion(est)
        return (done.expected + weight * done.spread, load.queued, load.id)

    return min(instances, key=score).id
