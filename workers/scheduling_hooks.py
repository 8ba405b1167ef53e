"""Controller hooks and the dispatch order for TaskInstances, prediction and scheduling.

Wire them into a controller with::

    service = scheduler_service(kiln)
    Controller(kiln, hooks=controller_hooks() + scheduling_hooks(kiln), order=scheduler_order(kiln))

Each hook runs on every controller pass (cheap when there is nothing to do):

* ``detect_lost_instances`` — instances silent past ``KILN_INSTANCE_LOST_AFTER_S`` become
  ``lost`` and their running tasks are retried elsewhere (at most once a second);
* ``annotate_predictions`` — waiting ``model_type`` tasks get the prediction they will be
  scheduled with;
* ``note_waiting`` — ready ``model_type`` tasks say when every instance serving them is busy;
* ``note_unroutable`` — ready ``model_type`` tasks no live instance serves say so (once a
  second: it scans the ready queue, so it stays off the dispatch path);
* the scheduler service's ``sync`` — learns finished run times and persists its state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kiln.app.predictor import predictor_for
from kiln.app.runtime import Kiln
from kiln.app.scheduler import SchedulerService, annotate_predictions_txn
from kiln.store.db import utcnow
from kiln.store.instances import detect_lost_txn, free_slots, note_busy_txn, note_unroutable_txn

log = logging.getLogger("kiln.controller")
Hook = Callable[[Kiln], Any]
LOST_CHECK_EVERY_S = 1.0

_services: dict[int, SchedulerService] = {}
_services_lock = threading.Lock()


def scheduler_service(kiln: Kiln) -> SchedulerService:
    """The one scheduler service of this process for ``kiln`` (shared by order and hooks)."""
    with _services_lock:
        service = _services.get(id(kiln))
        if service is None or service.kiln is not kiln:
            service = _services[id(kiln)] = SchedulerService(kiln)
        return service


def scheduler_order(kiln: Kiln) -> Callable[[list[Any]], list[Any]]:
    """The controller's ``order=``: the persisted policy, holding back model_type tasks
    beyond the free instance slots."""
    return scheduler_service(kiln).order


def detect_lost_instances(kiln: Kiln) -> dict[int, list[int]]:
    s = kiln.settings
    lost = kiln.txn(
        lambda c: detect_lost_txn(c, retry_base_s=s.retry_base_s, retry_max_s=s.retry_max_s)
    )
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
    predictor = predictor_for(kiln)
    return kiln.txn(lambda c: annotate_predictions_txn(c, predictor))


def note_waiting(kiln: Kiln) -> None:
    free = kiln.read(free_slots)
    if free:
        kiln.txn(lambda c: note_busy_txn(c, free))


def note_unroutable(kiln: Kiln) -> int:
    return kiln.txn(lambda c: note_unroutable_txn(c, utcnow()))


def scheduling_hooks(kiln: Kiln) -> list[Hook]:
    return [
        _every(LOST_CHECK_EVERY_S, detect_lost_instances),
        _every(LOST_CHECK_EVERY_S, note_unroutable),
        annotate_predictions,
        note_waiting,
        scheduler_service(kiln).sync,
    ]
