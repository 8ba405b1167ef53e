"""LateBudget: shortest expected first, FIFO-relative deadlines, and a budget of late items.

SEPTGuard (:mod:`kiln.core.scheduling.tail`) turns into FIFO when the queue is congested: every
long item reaches its deadline and runs oldest first, ahead of the short ones. But the p99
ignores the slowest 1 % of items. LateBudget spends most of that 1 % on purpose: an item that
reaches its deadline while it is among the largest predicted is *excused* (it stays in
shortest-expected order, which leaves it late) as long as fewer than ``late_share`` of the
recent starts were excused. The items that cost the most to run early are the ones left late,
so under congestion the queue keeps serving short work first instead of collapsing to FIFO.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from kiln.core.prediction.estimate import estimate
from kiln.core.scheduling import tuning
from kiln.core.scheduling.items import QueuedItem, SchedulerState
from kiln.core.scheduling.params import Param
from kiln.core.scheduling.tail import SEPTGuard

BUDGET_WINDOW = tuning.FIFO_WINDOW  # starts over which the excused share is counted


@dataclass
class LateBudget(SEPTGuard):
    """SEPTGuard's order and deadlines, except that up to ``late_share`` of the items, chosen
    among the largest predicted (the top ``large_share`` of recent expected sizes) when they
    reach their deadline, are left late instead of running first.

    Deadlines are ``max(guard × FIFO's p99, fifo_ratio × the item's own FIFO wait)``, measured
    as for SEPTGuard. The budget is counted over the last ``BUDGET_WINDOW`` starts, so it is a
    share of the traffic, not a number of seconds; an excused item keeps no deadline (it runs
    in shortest-expected order, after the shorter work). Every choice is recorded in the
    state, so the controller's sort and the simulator's heap make the same ones in the same
    order (earliest deadline first).
    """

    name: ClassVar[str] = "LateBudget"
    PARAMS: ClassVar[Mapping[str, Param]] = {
        "guard": Param(0, 100),
        "fifo_ratio": Param(0, 100),
        "late_share": Param(0, 0.5),
        "large_share": Param(0, 1),
    }
    # The p99 leaves 1 % of the items free: 0.8 % is spent, the rest is margin. The guard is
    # looser than SEPTGuard's 0.8, since the largest late items no longer have to run first;
    # 0.85, not 0.9, since FIFO's p99 counts the arrivals its replay has not reached
    # (docs/scheduling.md, "Why LateBudget missed").
    guard: float = 0.85
    fifo_ratio: float = 1.0
    late_share: float = 0.008
    large_share: float = 0.1

    def deadline(self, item, state):
        if item.id in state.excused:
            return None
        return super().deadline(item, state)

    def large_size(self, state: SchedulerState) -> float | None:
        """The expected size above which an item counts as one of the largest: the
        ``1 − large_share`` quantile of the recent predictions (``None`` before 32)."""
        sizes = sorted(expected for expected, _ in state.recent_pairs)
        if len(sizes) < 2 * tuning.MIN_SAMPLES or self.large_share <= 0:
            return None
        return sizes[min(int((1 - self.large_share) * len(sizes)), len(sizes) - 1)]

    def excuse(self, item, now, state):
        if item.predicted is None or item.id in state.excused:
            return False
        large = self.large_size(state)
        if large is None or estimate(item.predicted).expected < large:
            return False
        clock = state.total_scheduled
        state.excused_at[:] = [at for at in state.excused_at if at > clock - BUDGET_WINDOW]
        if len(state.excused_at) + 1 > self.late_share * min(clock, BUDGET_WINDOW):
            return False
        state.excused_at.append(clock)
        state.excused[item.id] = clock
        if len(state.excused) > 16 * BUDGET_WINDOW:
            # Items excused and never started under this policy (cancelled, or the policy
            # was switched): the oldest go first.
            for key in list(state.excused)[:BUDGET_WINDOW]:
                del state.excused[key]
        return True

    def record_start(self, item, now, state):
        state.excused.pop(item.id, None)
        super().record_start(item, now, state)

    def explain_order(self, items, now, state):
        # A dry run: the excuses it makes are not kept.
        return super().explain_order(items, now, copy.deepcopy(state))

    def explain(self, item: QueuedItem, now: float, state: SchedulerState) -> str:
        if item.id in state.excused and item.predicted is not None:
            return (
                f"LateBudget: past its deadline but left late (one of the largest predicted, "
                f"within the {self.late_share:.1%} late budget); expected size "
                f"{estimate(item.predicted).expected:.3f} s, smallest first"
            )
        return "LateBudget" + super().explain(item, now, state).removeprefix("SEPTGuard")
