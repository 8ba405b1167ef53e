"""The scheduler the service holds: one switchable policy plus its persistent state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kiln.core.prediction.estimate import estimate
from kiln.core.scheduling import tuning
from kiln.core.scheduling.base import Policy
from kiln.core.scheduling.items import QueuedItem, SchedulerState
from kiln.core.scheduling.params import InvalidPolicyParams
from kiln.core.scheduling.policies import make_policy, policy_or_defaults


@dataclass(frozen=True)
class Decision:
    """One line of a dry run: the item, its position (0 = runs next) and why."""

    position: int
    item: QueuedItem
    reason: str


class Scheduler:
    """Orders ready work with the current policy and keeps the state and counters.

    ``set_policy`` switches at run time; the state (virtual runtimes, round-robin turn,
    counters) survives the switch, and the next ``order`` re-orders everything queued.
    """

    def __init__(
        self,
        policy: str = "FIFO",
        state: SchedulerState | None = None,
        params: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """``params`` maps policy names to their tuning parameters, used whenever that policy
        is selected (e.g. ``{"ShortestPredicted": {"aging": 0.02}}``). Invalid ones (stored
        before they were checked) give way to the policy's defaults, and ``params_error``
        says why."""
        self.params = dict(params or {}) if isinstance(params, dict) else {}
        self.state = state if state is not None else SchedulerState()
        self.params_error: InvalidPolicyParams | None = None
        self.policy: Policy = self._with_stored_params(policy)

    def _with_stored_params(self, name: str) -> Policy:
        policy, self.params_error = policy_or_defaults(name, self.params.get(name, {}))
        return policy

    @property
    def policy_name(self) -> str:
        return self.policy.name

    def set_policy(self, name: str, **params: Any) -> None:
        """Switch policy; raises ``UnknownPolicy`` for a bad name and ``InvalidPolicyParams``
        for bad ``params`` (the current policy stays). Without ``params`` the policy takes
        its stored ones, or its defaults when those are invalid (see ``params_error``)."""
        if not params:
            self.policy = self._with_stored_params(name)
            return
        stored = self.params.get(name, {})
        _, stored_error = policy_or_defaults(name, stored)
        merged = {**(stored if stored_error is None else {}), **params}
        self.policy = make_policy(name, **merged)
        self.params[name] = merged
        self.params_error = None

    def order(self, items: Sequence[QueuedItem], now: float) -> list[QueuedItem]:
        return self.policy.order(items, now, self.state)

    def next(self, items: Sequence[QueuedItem], now: float) -> QueuedItem | None:
        return self.policy.pick(items, now, self.state)

    def explain(
        self, items: Sequence[QueuedItem], now: float, limit: int | None = None
    ) -> list[Decision]:
        """Dry run: what would run, in order, and why; changes nothing."""
        ordered = self.policy.explain_order(items, now, self.state)[:limit]
        return [Decision(position, item, reason) for position, (item, reason) in enumerate(ordered)]

    def record_start(self, item: QueuedItem, now: float) -> None:
        # Measured under every policy, so a self-tuning one switched on is tuned already.
        expected = estimate(item.predicted).expected if item.predicted else None
        tuning.note_start(self.state, item.id, now, expected)
        self.policy.record_start(item, now, self.state)

    def record_arrival(self, item: QueuedItem, now: float, queued_work: float) -> None:
        """``item`` joined the queue at ``now`` behind ``queued_work`` predicted seconds of
        waiting items (self-tuning policies measure FIFO's response times from it)."""
        expected = estimate(item.predicted).expected if item.predicted else None
        tuning.note_arrival(self.state, item.id, now, queued_work, item.enqueued_at, expected)

    def record_finish(self, item: QueuedItem, runtime: float, now: float) -> None:
        tuning.note_finish(self.state, item.id, runtime)
        self.policy.record_finish(item, runtime, now, self.state)

    def stats(self, active: int) -> dict[str, Any]:
        """Counters in the shape of the kernel scheduler's stats (``active_processes`` is the
        same number as ``active``: the items queued or running)."""
        return {
            "total_scheduled": self.state.total_scheduled,
            "context_switches": self.state.context_switches,
            "preemptions": self.state.preemptions,
            "active": active,
            "active_processes": active,
            "policy": self.policy_name,
            "quantum_micros": self.state.quantum_micros,
        }
