"""The policies built from expected sizes for issue 17: shortest-expected-first (the mean),
and the two that add tail protection to it, γ-Boost and SEPTGuard. Their knobs are measured
from the live queue (:mod:`kiln.core.scheduling.tuning`), never set in seconds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from kiln.core.prediction.estimate import estimate
from kiln.core.scheduling import tuning
from kiln.core.scheduling.base import KeyedPolicy
from kiln.core.scheduling.items import QueuedItem, SchedulerState
from kiln.core.scheduling.params import Param


@dataclass
class ShortestExpected(KeyedPolicy):
    """Shortest expected processing time first (SEPT, the cμ rule with equal costs).

    For the mean response time of a non-preemptive queue whose size distributions are known
    per class, serving the class with the smallest expected size first is optimal among
    non-preemptive policies (Smith's rule; Cox and Smith, *Queues*, 1961, the cμ rule). The
    expected size comes from the item's predicted quantiles; ties, and items without a
    prediction, go oldest first (an item without one is ranked after every item with one).
    No aging: this is the baseline for the mean, with no protection for the tail.
    """

    name: ClassVar[str] = "ShortestExpected"

    def rank_key(self, item, state):
        if item.predicted is None:
            return (1, 0.0, item.enqueued_at, item.id)
        return (0, estimate(item.predicted).expected, item.enqueued_at, item.id)

    def _key(self, item, now, state, ctx):
        return self.rank_key(item, state)

    def explain(self, item, now, state):
        if item.predicted is None:
            return "ShortestExpected: no prediction, runs after predicted items, oldest first"
        return (
            f"ShortestExpected: expected size {estimate(item.predicted).expected:.3f} s, "
            f"smallest first"
        )


@dataclass
class Boost(KeyedPolicy):
    """γ-Boost (Yu and Scully, SIGMETRICS 2024) with predicted sizes, self-tuned.

    Items run in order of *boosted arrival time*: enqueued time minus a boost that is large
    for an item predicted short and tends to zero for one predicted long,
    ``b = (1/γ)·log(M/(M − 1))`` with ``M = E[exp(γ·S)]`` over the item's predicted size
    distribution (see :mod:`kiln.core.scheduling.tuning`). γ, the decay rate of FCFS's tail, is
    recomputed from the measured arrival rate, run times and instances every few starts, so
    nothing is in seconds: an item of expected size ``S`` overtakes one of size ``s`` that
    arrived up to ``b(s) − b(S)`` earlier, and that lead grows as the load approaches 1. The
    paper proves it strongly tail-optimal for light-tailed sizes (it keeps FCFS's tail decay
    rate and lowers its constant); between classes of very different sizes it orders like
    shortest-expected-first, which is what cuts the mean.

    An item without a prediction is boosted as a draw from the recent run times; before
    anything has finished (no γ yet) the order is FIFO.
    """

    name: ClassVar[str] = "Boost"

    def gamma(self, state: SchedulerState) -> float | None:
        """The γ the boosts use: the self-tuned one (None before anything has finished)."""
        return state.boost_gamma

    def boost(self, item: QueuedItem, state: SchedulerState) -> float:
        gamma = self.gamma(state)
        if gamma is None:
            return 0.0
        k = tuning.servers(state)
        if item.predicted is not None:
            sizes = [s / k for s in tuning.size_points(item.predicted)]
        else:
            recent = sorted(state.recent_sizes)
            if not recent:
                return 0.0
            sizes = [
                recent[int(q * len(recent))] / k
                for q in (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
            ]
        return min(tuning.boost(gamma, sizes), 1e12)

    def rank_key(self, item, state):
        return (item.enqueued_at - self.boost(item, state), item.enqueued_at, item.id)

    def rank_epoch(self, state):
        return (state.boost_epoch, tuning.servers(state))

    def _key(self, item, now, state, ctx):
        return self.rank_key(item, state)

    def explain(self, item, now, state):
        if state.boost_gamma is None:
            return "Boost: nothing finished yet to tune from, oldest first"
        b = self.boost(item, state)
        size = (
            "no prediction"
            if item.predicted is None
            else (f"expected size {estimate(item.predicted).expected:.3f} s")
        )
        return (
            f"Boost: {size}, boost {b:.3f} s (γ {state.boost_gamma:.4g}/s, "
            f"{tuning.servers(state)} instance(s)); boosted arrival "
            f"{item.enqueued_at - b:.3f}, earliest first"
        )


@dataclass
class SEPTGuard(KeyedPolicy):
    """Shortest expected processing time first, with a deadline relative to FIFO's tail.

    The mean comes from SEPT (see :class:`ShortestExpected`); the tail from a guard: an item
    becomes urgent once it has waited ``guard`` times FIFO's p99 response time, or
    ``fifo_ratio`` times the wait FIFO would have given it if that is longer; urgent items
    run first, earliest deadline first (oldest first). Both FIFO figures are measured on the
    live queue while this policy runs (:mod:`kiln.core.scheduling.tuning`): the p99 by
    replaying FIFO on the arrival times and actual run times, the item's own wait from the
    predicted work ahead of it when it arrived. So the knobs are ratios, nothing is in
    seconds, and an item is held back about as long as FIFO would have held the slowest 1 %,
    no longer. Before anything has been measured there is no deadline: plain SEPT.
    """

    name: ClassVar[str] = "SEPTGuard"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "guard": Param(0, 100),
        "fifo_ratio": Param(0, 100),
    }
    # Chosen on the two shared traces (issue 17's targets met on both with a margin); the
    # grid in the README shows them on traces they were not chosen on.
    guard: float = 0.8
    fifo_ratio: float = 1.0

    def rank_key(self, item, state):
        if item.predicted is None:
            return (1, 0.0, item.enqueued_at, item.id)
        return (0, estimate(item.predicted).expected, item.enqueued_at, item.id)

    def rank_epoch(self, state):
        return state.boost_epoch

    def patience(self, item: QueuedItem, state: SchedulerState) -> float | None:
        """Seconds ``item`` may wait before it is urgent."""
        p99 = tuning.fifo_p99(state)
        own = state.fifo_waits.get(item.id)
        bounds = [
            *(() if p99 is None else (self.guard * p99,)),
            *(() if own is None else (self.fifo_ratio * own,)),
        ]
        return max(bounds) if bounds else None

    def deadline(self, item, state):
        patience = self.patience(item, state)
        return None if patience is None else item.enqueued_at + patience

    def _key(self, item, now, state, ctx):
        return self.rank_key(item, state)

    def explain(self, item, now, state):
        patience = self.patience(item, state)
        waited = max(now - item.enqueued_at, 0.0)
        if patience is not None and waited >= patience:
            return (
                f"SEPTGuard: waited {waited:.1f} s >= {patience:.1f} s ({self.guard:g} × FIFO's "
                f"estimated p99), urgent: runs oldest first ahead of the rest"
            )
        size = (
            "no prediction, after predicted items"
            if item.predicted is None
            else f"expected size {estimate(item.predicted).expected:.3f} s, smallest first"
        )
        limit = "" if patience is None else f"; urgent after {patience:.1f} s of waiting"
        return f"SEPTGuard: {size}{limit}"
