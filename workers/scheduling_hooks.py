"""Controller hooks and the dispatch order for TaskInstances, prediction and scheduling.

Wire them into a controller with::

    Controller(kiln, hooks=controller_hooks() + scheduling_hooks(kiln), order=scheduler_order(kiln))

Each hook runs on every controller pass (cheap when there is nothing to do):

* ``detect_lost_instances`` — instances silent past ``KILN_INSTANCE_LOST_AFTER_S`` become
  ``lost`` and their running tasks are retried elsewhere (at most once a second);
* ``annotate_predictions`` — waiting ``model_type`` tasks get the prediction they will be
  scheduled with;
* ``note_waiting`` — ready ``model_type`` tasks say when every instance serving them is busy;
* ``note_unroutable`` — ready ``model_type`` tasks no live instance serves say so (once a
  second: it scans the ready queue, so it stays off the dispatch path);
* ``sync_scheduler`` — the scheduler service learns finished run times and persists its
  state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kiln.app.runtime import Kiln

log = logging.getLogger("kiln.controller")
Hook = Callable[[Kiln], Any]
LOST_CHECK_EVERY_S = 1.0


def scheduler_order(kiln: Kiln) -> Callable[[list[Any], int], list[Any]]:
    """The controller's ``order=``: the persisted policy, holding back model_type tasks
    beyond the free instance slots (``kiln.scheduler``'s one service in this process)."""
    return kiln.scheduler.order


def detect_lost_instances(kiln: Kiln) -> dict[int, list[int]]:
    lost = kiln.instances.detect_lost()
    for instance_id, task_ids in lost.items():
        log.warning(
            "instance %s lost; re-queued its %d running tasks %s",
            instance_id,
            len(task_ids),
            task_ids[:20],
        )
    return lost


def _every(interval_s: float, hook: Hook) -> Hook:
    last = [-1e9]

    def run(kiln: Kiln) -> Any:
        if time.monotonic() - last[0] < interval_s:
            return None
        last[0] = time.monotonic()
        return hook(kiln)

    run.__name__ = getattr(hook, "__name__", "hook")
    return run


def annotate_predictions(kiln: Kiln) -> int:
    return kiln.predictor.annotate_waiting()


def note_waiting(kiln: Kiln) -> None:
    kiln.instances.note_busy()


def note_unroutable(kiln: Kiln) -> int:
    return kiln.instances.note_unroutable()


def sync_scheduler(kiln: Kiln) -> None:
    kiln.scheduler.sync()


def scheduling_hooks(kiln: Kiln) -> list[Hook]:
    return [
        _every(LOST_CHECK_EVERY_S, detect_lost_instances),
        _every(LOST_CHECK_EVERY_S, note_unroutable),
        annotate_predictions,
        note_waiting,
        sync_scheduler,
    ]
