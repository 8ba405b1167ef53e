"""What every queue-ordering policy is: ``Policy``, and ``KeyedPolicy`` for the policies
that rank each item on its own by a sort key (the ones a heap can order).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from kiln.core.scheduling.items import QueuedItem, SchedulerState
from kiln.core.scheduling.params import Param


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

    def excuse(self, item: QueuedItem, now: float, state: SchedulerState) -> bool:
        """Asked, earliest deadline first, of each item past its deadline: ``True`` leaves it
        late instead (it keeps its place in the rank order; the policy records that in
        ``state``, so that :meth:`deadline` then says ``None``). Never, by default."""
        return False

    def record_start(self, item: QueuedItem, now: float, state: SchedulerState) -> None:
        state.total_scheduled += 1
        if state.total_scheduled > 1 and item.group != state.last_group:
            state.context_switches += 1
        state.last_group = item.group

    def record_finish(  # noqa: B027 - optional hook; most policies keep no per-finish state
        self, item: QueuedItem, runtime: float, now: float, state: SchedulerState
    ) -> None:
        """``runtime`` is the item's actual execution time in seconds."""


class KeyedPolicy(Policy):
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
            if type(self).excuse is not Policy.excuse:
                # In the order the ready queue's deadline heap asks, so both excuse the same.
                due = [(self.deadline(i, state), i.enqueued_at, i.id, i) for i in items]
                for *_, item in sorted(d for d in due if d[0] is not None and d[0] <= now):
                    self.excuse(item, now, state)

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
