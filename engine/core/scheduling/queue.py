"""A ready queue that picks in the current policy's order in O(log n).

Policies with a time-invariant key (:meth:`~kiln.core.scheduling.base.KeyedPolicy.rank_key`:
FIFO, Priority, ShortestExpected, Boost, SEPTGuard, LateBudget) keep their items in a heap,
plus a second heap by deadline when the policy gives items one (an item past its deadline
runs first, earliest deadline first, unless the policy excuses it); the heaps are rebuilt
when the policy or its self-tuned parameters change (``rank_epoch``) or when the items'
predictions are replaced. Other policies (RoundRobin, Fair, ShortestPredicted, whose rank
depends on the whole queue) are asked to pick from the list, as the controller does.
Either way the pick is exactly the first item of ``scheduler.order(items, now)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

from kiln.core.prediction.estimate import estimate
from kiln.core.scheduling.items import QueuedItem
from kiln.core.scheduling.scheduler import Scheduler


class ReadyQueue:
    """The items waiting for ``scheduler``, keyed by id."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._items: dict[str, QueuedItem] = {}
        self._work = 0.0  # predicted seconds waiting
        self._heap: list[tuple[tuple, str]] = []
        self._due: list[tuple[float, float, str]] = []  # (deadline, enqueued_at, id)
        self._keyed_by: tuple[Any, ...] | None = None  # (policy, epoch) the heap was built for

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueuedItem]:
        return iter(self._items.values())

    def _signature(self) -> tuple[Any, ...] | None:
        policy = self.scheduler.policy
        if not self._items:
            return None
        probe = next(iter(self._items.values()))
        if policy.rank_key(probe, self.scheduler.state) is None:
            return None
        return (policy, policy.rank_epoch(self.scheduler.state))

    def _rebuild(self, signature: tuple[Any, ...]) -> None:
        self._heap, self._due = [], []
        self._keyed_by = signature
        for item in self._items.values():
            self._index(item)
        heapq.heapify(self._heap)
        heapq.heapify(self._due)

    def _index(self, item: QueuedItem, push: bool = False) -> None:
        policy, state = self.scheduler.policy, self.scheduler.state
        add: Callable[[list[Any], Any], None] = heapq.heappush if push else list.append
        add(self._heap, (policy.rank_key(item, state), item.id))
        due = policy.deadline(item, state)
        if due is not None:
            add(self._due, (due, item.enqueued_at, item.id))

    def push(self, item: QueuedItem, now: float | None = None) -> None:
        """Queue ``item``; with ``now``, it is an arrival the scheduler measures."""
        if now is not None:
            self.scheduler.record_arrival(item, now, self._work)
        self._items[item.id] = item
        self._work += _expected(item)
        if self._keyed_by is not None:
            self._index(item, push=True)

    def pop(self, now: float) -> QueuedItem | None:
        """Remove and return the item the policy runs next (``None`` when empty)."""
        if not self._items:
            return None
        signature = self._signature()
        if signature is None:
            self._keyed_by = None
            item = self.scheduler.next(list(self._items.values()), now)
            assert item is not None
            return self._take(item.id)
        if signature != self._keyed_by:
            self._rebuild(signature)
        policy, state = self.scheduler.policy, self.scheduler.state
        while self._due and self._due[0][0] <= now:
            item = self._items.get(heapq.heappop(self._due)[2])
            if item is not None and not policy.excuse(item, now, state):
                return self._take(item.id)
        while True:
            item = self._take(heapq.heappop(self._heap)[1])
            if item is not None:
                return item

    def _take(self, item_id: str) -> QueuedItem | None:
        item = self._items.pop(item_id, None)
        if item is not None:
            self._work = max(self._work - _expected(item), 0.0) if self._items else 0.0
        return item

    def remove(self, item_id: str) -> QueuedItem | None:
        """Take an item out without running it (its heap entries are skipped later)."""
        return self._take(item_id)

    def refresh(self, update: Callable[[QueuedItem], QueuedItem]) -> None:
        """Replace every waiting item with ``update(item)`` (new predictions) and re-key."""
        self._items = {i.id: update(i) for i in self._items.values()}
        self._work = sum(map(_expected, self._items.values()))
        self._keyed_by = None
        self._heap, self._due = [], []


def _expected(item: QueuedItem) -> float:
    return estimate(item.predicted).expected if item.predicted else 0.0
