"""Queue-ordering policies: which ready item runs next.

Every policy is a small object over plain data: ``order(items, now, state)`` returns the items
in the order they would run, ``pick`` the first of them (cheaper), ``explain`` why an item sits
where it does, and ``record_start`` / ``record_finish`` update the persistent
:class:`SchedulerState`. Policies hold only their tuning parameters, so switching policy at run
time is replacing the object; the next ``order`` re-orders everything already queued.

Times are seconds on the caller's clock. Work is non-preemptive: once started, an item runs to
its end.
"""

from __future__ import annotations

import abc
import bisect
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kiln.core.prediction.estimate import estimate, quantile_value
from kiln.core.scheduling import tuning
from kiln.core.scheduling.items import QueuedItem, SchedulerState, UnknownPolicy
from kiln.core.scheduling.params import InvalidPolicyParams, Param, check_params

_MICROS = 1_000_000


class Policy(abc.ABC):
    """Base class; ``record_start`` keeps the counters every policy reports."""

    name: ClassVar[str] = ""
    # The tuning parameters the constructor takes, with their types and ranges.
    PARAMS: ClassVar[Mapping[str, Param]] = {}

    @abc.abstractmethod
    def order(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> list[QueuedItem]:
        """The items in the order to run them."""

    def pick(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> QueuedItem | None:
        ordered = self.order(items, now, state)
        return ordered[0] if ordered else None

    @abc.abstractmethod
    def explain(self, item: QueuedItem, now: float, state: SchedulerState) -> str:
        """Why ``item`` is where it is in the order, for people."""

    def explain_order(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> list[tuple[QueuedItem, str]]:
        """The items in the order to run them, each with why; a policy whose rank depends on
        the whole queue overrides this to say so exactly."""
        return [(item, self.explain(item, now, state)) for item in self.order(items, now, state)]

    def rank_key(self, item: QueuedItem, state: SchedulerState) -> tuple | None:
        """The item's time-invariant sort key, or ``None`` when this policy has none."""
        return None

    def rank_epoch(self, state: SchedulerState) -> Any:
        """Changes whenever :meth:`rank_key` or :meth:`deadline` of an unchanged item may
        have changed."""
        return None

    def deadline(self, item: QueuedItem, state: SchedulerState) -> float | None:
        """When the item becomes urgent: from then on it runs before every item that is not,
        earliest deadline first. ``None``: never (the default)."""
        return None

    def record_start(self, item: QueuedItem, now: float, state: SchedulerState) -> None:
        state.total_scheduled += 1
        if state.total_scheduled > 1 and item.group != state.last_group:
            state.context_switches += 1
        state.last_group = item.group

    def record_finish(  # noqa: B027 - optional hook; most policies keep no per-finish state
        self, item: QueuedItem, runtime: float, now: float, state: SchedulerState
    ) -> None:
        """``runtime`` is the item's actual execution time in seconds."""


class _KeyedPolicy(Policy):
    """A policy that ranks each item independently by a sort key (smallest first).

    When the key depends on neither the time nor the rest of the queue, :meth:`rank_key`
    returns it, and a :class:`~kiln.core.scheduling.queue.ReadyQueue` keeps the items in a
    heap (O(log n) a pick) instead of scanning them; it re-keys everything when
    :meth:`rank_epoch` changes (a self-tuned parameter moved).
    """

    def _context(self, items: Sequence[QueuedItem], now: float, state: SchedulerState) -> Any:
        return None

    @abc.abstractmethod
    def _key(self, item: QueuedItem, now: float, state: SchedulerState, ctx: Any) -> tuple:
        """The sort key of ``item`` (smallest runs first)."""

    def _sort_key(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> Callable[[QueuedItem], tuple]:
        # The time-invariant key when there is one, so that a sorted list, a heap and the
        # controller's order agree to the last tie.
        if items and self.rank_key(items[0], state) is not None:

            def key(item: QueuedItem) -> tuple:
                due = self.deadline(item, state)
                if due is not None and due <= now:
                    return (0, due, item.enqueued_at, item.id)
                return (1, self.rank_key(item, state))

            return key
        ctx = self._context(items, now, state)
        return lambda item: self._key(item, now, state, ctx)

    def order(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> list[QueuedItem]:
        return sorted(items, key=self._sort_key(items, now, state))

    def pick(
        self, items: Sequence[QueuedItem], now: float, state: SchedulerState
    ) -> QueuedItem | None:
        if not items:
            return None
        return min(items, key=self._sort_key(items, now, state))


@dataclass
class FIFO(_KeyedPolicy):
    """Oldest first; ties broken by id."""

    name: ClassVar[str] = "FIFO"

    def _key(self, item, now, state, ctx):
        return (item.enqueued_at, item.id)

    def rank_key(self, item, state):
        return (item.enqueued_at, item.id)

    def explain(self, item, now, state):
        return f"FIFO: enqueued at {item.enqueued_at:.3f}, waited {now - item.enqueued_at:.1f} s"


@dataclass
class Priority(_KeyedPolicy):
    """Highest effective priority first: ``priority + aging_per_minute · minutes waited``.

    Aging bounds starvation: an item waits at most ``(p_max − p) / aging_per_minute`` minutes
    longer than the newest item of priority ``p_max`` it competes with.
    """

    name: ClassVar[str] = "Priority"
    PARAMS: ClassVar[Mapping[str, Param]] = {"aging_per_minute": Param(0, 1e6)}
    aging_per_minute: float = 1.0

    def effective(self, item: QueuedItem, now: float) -> float:
        return item.priority + self.aging_per_minute * max(now - item.enqueued_at, 0.0) / 60.0

    def _key(self, item, now, state, ctx):
        return (-self.effective(item, now), item.enqueued_at, item.id)

    def rank_key(self, item, state):
        # −effective(now) = −priority − aging·(now − enqueued)/60: the now term is common to
        # every item, so dropping it keeps the order.
        return (
            -item.priority + self.aging_per_minute * item.enqueued_at / 60.0,
            item.enqueued_at,
            item.id,
        )

    def explain(self, item, now, state):
        waited = max(now - item.enqueued_at, 0.0)
        return (
            f"Priority: priority {item.priority} + aging {self.aging_per_minute:g}/min × "
            f"{waited / 60.0:.2f} min waited = {self.effective(item, now):.2f}"
        )


@dataclass
class Fair(_KeyedPolicy):
    """CFS-style fair share between tenants (or groups, when an item has no tenant).

    Each key accumulates virtual runtime = run time / weight, with weight =
    ``item.weight · priority_base ** priority`` (as nice levels: each priority step is ~25 %
    more CPU). The key with the lowest virtual runtime runs next, oldest item first. A newcomer,
    or a key returning after idling, starts at the current minimum virtual runtime, so it
    neither starves nor claims credit for time it was absent. With several instances the
    predicted run time is charged at start and corrected with the actual one at finish.
    """

    name: ClassVar[str] = "Fair"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        # Below 1 would invert priorities; 10 ** 40 (the priority clamp) still fits a float.
        "priority_base": Param(1, 10),
        "prune_every": Param(1, 10**9, integer=True),
    }
    priority_base: float = 1.25
    prune_every: int = 1024

    def weight(self, item: QueuedItem) -> float:
        return max(item.weight, 1e-9) * self.priority_base ** max(min(item.priority, 40), -40)

    def vruntime(self, item: QueuedItem, state: SchedulerState) -> float:
        return max(state.vruntimes.get(item.fair_key, state.min_vruntime), state.min_vruntime)

    def _key(self, item, now, state, ctx):
        return (self.vruntime(item, state), item.enqueued_at, item.id)

    def explain(self, item, now, state):
        return (
            f"Fair: {item.fair_key or '(no group)'!s} has vruntime "
            f"{self.vruntime(item, state):.3f} (weight {self.weight(item):.2f}); "
            f"lowest vruntime runs first"
        )

    def record_start(self, item, now, state):
        super().record_start(item, now, state)
        v = self.vruntime(item, state)
        state.min_vruntime = max(state.min_vruntime, v)
        charge = estimate(item.predicted).expected if item.predicted else 0.0
        state.vruntimes[item.fair_key] = v + charge / self.weight(item)
        state.inflight_charge[item.id] = charge
        if state.total_scheduled % self.prune_every == 0:
            # Keys at or below the floor behave exactly like absent ones; dropping them keeps
            # the state as small as the set of keys that are ahead.
            floor = state.min_vruntime
            state.vruntimes = {k: v for k, v in state.vruntimes.items() if v > floor}

    def record_finish(self, item, runtime, now, state):
        charged = state.inflight_charge.pop(item.id, 0.0)
        v = self.vruntime(item, state)
        state.vruntimes[item.fair_key] = max(v + (runtime - charged) / self.weight(item), 0.0)


@dataclass
class RoundRobin(Policy):
    """Take turns between groups, oldest item first within a group.

    A group keeps its turn until the run time of its finished items reaches the quantum
    (``state.quantum_micros``); then the turn passes to the next group in name order, cyclically.
    The projected order interleaves one item per group per round.
    """

    name: ClassVar[str] = "RoundRobin"

    @staticmethod
    def _group_key(item: QueuedItem) -> str:
        return item.group if item.group is not None else ""

    def _rotation(self, items, state) -> tuple[list[str], dict[str, list[QueuedItem]]]:
        by_group: dict[str, list[QueuedItem]] = {}
        for item in items:
            by_group.setdefault(self._group_key(item), []).append(item)
        names = sorted(by_group)
        current = state.rr_group if state.rr_group is not None else None
        if current is None:
            start = 0
        elif current in by_group and state.rr_used_micros < state.quantum_micros:
            start = names.index(current)
        else:
            start = bisect.bisect_right(names, current) % len(names)
        for queue in by_group.values():
            queue.sort(key=lambda i: (i.enqueued_at, i.id))
        return names[start:] + names[:start], by_group

    def order(self, items, now, state):
        if not items:
            return []
        rotation, by_group = self._rotation(items, state)
        ordered: list[QueuedItem] = []
        depth = 0
        while len(ordered) < len(items):
            for name in rotation:
                if depth < len(by_group[name]):
                    ordered.append(by_group[name][depth])
            depth += 1
        return ordered

    def pick(self, items, now, state):
        if not items:
            return None
        rotation, by_group = self._rotation(items, state)
        return by_group[rotation[0]][0]

    def explain(self, item, now, state):
        group = self._group_key(item) or "(no group)"
        if item.group == state.rr_group and state.rr_used_micros < state.quantum_micros:
            left = state.quantum_micros - state.rr_used_micros
            return f"RoundRobin: group {group} holds the turn with {left} µs of quantum left"
        return f"RoundRobin: group {group} waits for its turn in the rotation"

    def record_start(self, item, now, state):
        super().record_start(item, now, state)
        if item.group != state.rr_group:
            state.rr_group = item.group
            state.rr_used_micros = 0

    def record_finish(self, item, runtime, now, state):
        if item.group != state.rr_group or state.rr_used_micros >= state.quantum_micros:
            return
        state.rr_used_micros += int(runtime * _MICROS)
        if state.rr_used_micros >= state.quantum_micros:
            state.preemptions += 1


@dataclass(frozen=True)
class _QueueSizes:
    """What ``ShortestPredicted`` needs to know about the whole queue for one decision."""

    median: float  # the size an item without a prediction is ranked at
    backlog: float  # predicted work queued: what a newcomer would wait behind under FIFO


@dataclass
class ShortestPredicted(_KeyedPolicy):
    """Shortest predicted run time first, with aging so long work cannot starve.

    An item's size is its predicted ``quantile`` when set, else the expected time plus
    ``spread_penalty`` spreads (see :func:`kiln.core.prediction.estimate.estimate`). Items without
    a prediction count as the median size of those that have one. The rank is
    ``size − aging · waited``: every second of waiting forgives ``aging`` seconds of size, so
    an item of size ``S`` overtakes fresh items of size ``s`` after at most ``(S − s) / aging``
    seconds.

    The backlog guard bounds the tail relative to FIFO without a limit in seconds: the
    predicted work queued right now is what a job arriving now would wait behind under FIFO
    (on one instance), so an item that has waited longer than ``backlog_factor`` times that
    backlog is falling behind what FIFO would have given it. From that point on it ages
    ``backlog_aging`` seconds of size faster per second, and overtakes the short work that
    keeps arriving within ``(S − s) / (aging + backlog_aging)`` more seconds. With ``K``
    instances sharing the queue a FIFO newcomer waits about backlog / ``K``, so
    ``backlog_factor = 1 / K`` keeps the same meaning; ``None`` turns the guard off.

    ``starvation_limit`` (seconds, optional) is a hard bound on top: an item that has waited
    longer runs before every younger item, oldest first.
    """

    name: ClassVar[str] = "ShortestPredicted"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "aging": Param(0, 1e6),
        "spread_penalty": Param(0, 1e3),
        "quantile": Param(0, 1, nullable=True),
        "starvation_limit": Param(0, 1e9, nullable=True),
        "backlog_factor": Param(0, 1e6, nullable=True),
        "backlog_aging": Param(0, 1e6),
    }
    aging: float = 0.005
    spread_penalty: float = 0.0
    quantile: float | None = None
    starvation_limit: float | None = None
    backlog_factor: float | None = 1.0
    backlog_aging: float = 0.03

    def size(self, item: QueuedItem, default: float = 0.0) -> float:
        if item.predicted is None:
            return default
        if self.quantile is not None:
            return quantile_value(item.predicted, self.quantile)
        est = estimate(item.predicted)
        return est.expected + self.spread_penalty * est.spread

    def _context(self, items, now, state) -> _QueueSizes:
        sizes = [self.size(i) for i in items if i.predicted is not None]
        median = statistics.median(sizes) if sizes else 0.0
        return _QueueSizes(median, sum(sizes) + median * (len(items) - len(sizes)))

    def _starved(self, waited: float) -> bool:
        return self.starvation_limit is not None and waited > self.starvation_limit

    def _aging_credit(self, waited: float, queue: _QueueSizes) -> float:
        """Seconds of size forgiven after ``waited`` seconds in a queue of this backlog."""
        credit = self.aging * waited
        if self.backlog_factor is not None:
            credit += self.backlog_aging * max(waited - self.backlog_factor * queue.backlog, 0.0)
        return credit

    def _key(self, item, now, state, ctx):
        waited = max(now - item.enqueued_at, 0.0)
        if self._starved(waited):
            return (0, item.enqueued_at, item.id)
        return (1, self.size(item, ctx.median) - self._aging_credit(waited, ctx), item.id)

    def explain(self, item, now, state):
        return self._reason(item, now, None)

    def explain_order(self, items, now, state):
        ctx = self._context(items, now, state)
        ordered = sorted(items, key=lambda item: self._key(item, now, state, ctx))
        return [(item, self._reason(item, now, ctx)) for item in ordered]

    def _reason(self, item: QueuedItem, now: float, queue: _QueueSizes | None) -> str:
        """Why ``item`` ranks where it does; without the ``queue`` (one item explained on its
        own) the backlog guard's share of the rank is unknown, so the rule is stated."""
        waited = max(now - item.enqueued_at, 0.0)
        if self._starved(waited):
            return (
                f"ShortestPredicted: waited {waited:.1f} s > starvation limit "
                f"{self.starvation_limit:g} s, runs oldest-first ahead of younger work"
            )
        if item.predicted is None:
            size = queue.median if queue is not None else None
            size_text = "no prediction, ranked as the queue's median predicted size" + (
                "" if size is None else f" {size:.3f} s"
            )
        else:
            size = self.size(item)
            size_text = f"predicted size {size:.3f} s"
        text = f"ShortestPredicted: {size_text} − aging {self.aging:g} × {waited:.1f} s waited"
        if self.backlog_factor is None:
            return text if size is None else f"{text} = rank {size - self.aging * waited:.3f}"
        if queue is None or size is None:
            return (
                f"{text}, − {self.backlog_aging:g} × the seconds waited beyond "
                f"{self.backlog_factor:g} × the predicted work queued"
            )
        bound = self.backlog_factor * queue.backlog
        beyond = max(waited - bound, 0.0)
        return (
            f"{text} − backlog guard {self.backlog_aging:g} × {beyond:.1f} s waited beyond "
            f"{bound:.1f} s ({self.backlog_factor:g} × {queue.backlog:.1f} s of predicted work "
            f"queued) = rank {size - self._aging_credit(waited, queue):.3f}"
        )


@dataclass
class ShortestExpected(_KeyedPolicy):
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
class Boost(_KeyedPolicy):
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

    def boost(self, item: QueuedItem, state: SchedulerState) -> float:
        gamma = state.boost_gamma
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
class SEPTGuard(_KeyedPolicy):
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


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        FIFO,
        RoundRobin,
        Priority,
        Fair,
        ShortestPredicted,
        ShortestExpected,
        Boost,
        SEPTGuard,
    )
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def policy_class(name: Any) -> type[Policy]:
    """The policy class called exactly ``name``; :class:`UnknownPolicy` for any other."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise UnknownPolicy(name, POLICY_NAMES) from None


def check_policy_params(name: str, params: Any) -> dict[str, Any]:
    """``params`` when they are valid tuning parameters of policy ``name``: raises
    :class:`UnknownPolicy` or :class:`InvalidPolicyParams` (both ``ValueError``)."""
    return check_params(name, policy_class(name).PARAMS, params)


def make_policy(name: str, **params: Any) -> Policy:
    """The policy called exactly ``name`` with the given tuning parameters.

    Raises :class:`UnknownPolicy` (a ``ValueError``) for any other name and
    :class:`InvalidPolicyParams` (a ``ValueError``) for parameters of the wrong type or range.
    """
    return policy_class(name)(**check_policy_params(name, params))


def policy_or_defaults(name: str, params: Any) -> tuple[Policy, InvalidPolicyParams | None]:
    """The policy ``name`` with stored ``params``, or with its defaults when they are invalid
    (written before they were checked, or by hand): the error comes back so the caller can
    say so. Raises :class:`UnknownPolicy` for an unknown name."""
    cls = policy_class(name)
    try:
        return cls(**check_params(name, cls.PARAMS, params)), None
    except InvalidPolicyParams as exc:
        return cls(), exc
