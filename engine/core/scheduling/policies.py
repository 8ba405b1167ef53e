"""Queue-ordering policies: which ready item runs next, and the registry of them by name.

The classic policies (FIFO, Priority, Fair, RoundRobin, ShortestPredicted) live here; what
every policy is, in :mod:`kiln.core.scheduling.base`; the expected-size policies of issue 17
(ShortestExpected, Boost, SEPTGuard), in :mod:`kiln.core.scheduling.tail`; LateBudget in
:mod:`kiln.core.scheduling.deadline`.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from kiln.core.prediction.estimate import estimate, quantile_value
from kiln.core.scheduling.base import KeyedPolicy, Policy
from kiln.core.scheduling.deadline import LateBudget
from kiln.core.scheduling.items import QueuedItem, SchedulerState, UnknownPolicy
from kiln.core.scheduling.params import InvalidPolicyParams, Param, check_params
from kiln.core.scheduling.tail import Boost, SEPTGuard, ShortestExpected

__all__ = [
    "FIFO",
    "POLICIES",
    "POLICY_NAMES",
    "Fair",
    "Priority",
    "RoundRobin",
    "ShortestPredicted",
    "check_policy_params",
    "make_policy",
    "policy_class",
    "policy_or_defaults",
]

_MICROS = 1_000_000


@dataclass
class FIFO(KeyedPolicy):
    """Oldest first; ties broken by id."""

    name: ClassVar[str] = "FIFO"

    def _key(self, item, now, state, ctx):
        return (item.enqueued_at, item.id)

    def rank_key(self, item, state):
        return (item.enqueued_at, item.id)

    def explain(self, item, now, state):
        return f"FIFO: enqueued at {item.enqueued_at:.3f}, waited {now - item.enqueued_at:.1f} s"


@dataclass
class Priority(KeyedPolicy):
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
class Fair(KeyedPolicy):
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
class ShortestPredicted(KeyedPolicy):
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
        # Imported here: statistics imports fractions, ~18 ms of every process's start-up
        # (the controller and the workers import this registry) for one median.
        import statistics

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
        LateBudget,
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
