"""The live path uses the simulator's code: on a recorded queue the controller's dispatch
order (``kiln.scheduler.order``, with the policy and tuned state read from the database) is
exactly the order in which the simulator's ReadyQueue picks."""

from __future__ import annotations

import datetime as dt
import time
from types import SimpleNamespace

import pytest

from kiln.app.runtime import Kiln
from kiln.core.scheduling import QueuedItem, Scheduler, SchedulerState
from kiln.core.scheduling.queue import ReadyQueue
from kiln.store import scheduler_state as state_store
from tests.unit.test_scheduling_self_tuning import replay


def recorded_queue(policy: str) -> tuple[list[QueuedItem], float, SchedulerState]:
    """A queue and tuned state recorded from a simulated run, in kiloseconds so that no
    deadline falls within a second of the moment it is ranked."""
    _, (items, now, scheduler) = replay(policy, scale=1000.0, snapshot_at=300)
    state = scheduler.state
    if policy in ("SEPTGuard", "LateBudget"):
        # Rank it when half the queue is past its FIFO deadline, halfway between two.
        deadlines = sorted(scheduler.policy.deadline(i, state) for i in items)
        middle = len(deadlines) // 2
        now = (deadlines[middle - 1] + deadlines[middle]) / 2
    ids = {item.id: f"{int(item.id) + 1:015d}" for item in items}
    state.fifo_waits = {ids.get(k, k): v for k, v in state.fifo_waits.items()}
    items = [QueuedItem(ids[i.id], None, 0, i.enqueued_at, predicted=i.predicted) for i in items]
    return items, now, state


def as_rows(items: list[QueuedItem], shift: float) -> list[SimpleNamespace]:
    """The queue as the dispatch query's candidate rows."""
    return [
        SimpleNamespace(
            id=int(item.id),
            workflow_id=1,
            priority=0,
            ready_at=dt.datetime.fromtimestamp(item.enqueued_at + shift, dt.UTC),
            created_at=None,
            predicted=item.predicted.to_dict() if item.predicted else None,
            handler="tests.handlers.noop",
            model_type=None,
        )
        for item in items
    ]


@pytest.mark.parametrize("policy", ["LateBudget", "SEPTGuard", "Boost", "ShortestExpected", "FIFO"])
def test_the_controller_dispatches_a_recorded_queue_in_the_simulators_order(kiln: Kiln, policy):
    items, now, state = recorded_queue(policy)
    kiln.scheduler.set_policy(policy)

    def store_state(conn):
        stored = state_store.load_txn(conn, lock=True)
        stored.state = SchedulerState.from_dict(state.to_dict())
        state_store.write_txn(conn, stored)

    kiln.txn(store_state)
    simulated = ReadyQueue(Scheduler(policy, SchedulerState.from_dict(state.to_dict())))
    for item in items:
        simulated.push(item)
    expected = [int(simulated.pop(now).id) for _ in items]
    assert expected != sorted(expected) or policy == "FIFO"

    # The same instant on the controller's clock: enqueued times shifted by (wall − now).
    shift = time.time() - now
    dispatched = kiln.scheduler.order(as_rows(items, shift))
    assert [row.id for row in dispatched] == expected
