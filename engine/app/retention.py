"""``kiln.retention``: removing finished runs (``KILN_RETENTION_DAYS``, each schedule's
``retention_days``, or ``kiln db prune --older-than``) in batches, one short transaction
each; the rules and the SQL are in :mod:`kiln.store.retention`."""

from __future__ import annotations

import datetime as dt
import logging
import time
from functools import partial
from typing import Any

import sqlalchemy as sa

from kiln.app.database import Database
from kiln.core.clock import utcnow
from kiln.store import retention as ret

log = logging.getLogger("kiln.retention")
# A controller prunes one small batch per step, so a busy controller's dispatch waits for at
# most one short transaction: a step every PRUNE_STEP_S while old runs are left (a hundred
# runs a second per controller, millions a day), every PRUNE_EVERY_S otherwise.
CONTROLLER_BATCH = 100
PRUNE_STEP_S = 1.0
PRUNE_EVERY_S = 30.0


class Retention:
    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln
        self._next_at = 0.0

    def _cutoffs(self, older_than: dt.timedelta | None) -> ret.Cutoffs:
        settings = self._kiln.settings
        return self._kiln.read(
            lambda c: ret.cutoffs(
                c,
                now=utcnow(),
                default_days=settings.retention_days,
                older_than=older_than,
                days_by_name=settings.retention_days_by_name,
            )
        )

    def preview(self, older_than: dt.timedelta | None = None) -> dict[str, Any]:
        """What :meth:`prune` would delete now (counts), and the cutoff(s) used."""
        cut = self._cutoffs(older_than)
        counts = self._kiln.read(lambda c: ret.preview(c, cut))
        return {**counts, "cutoff": cut.default, "schedules": cut.by_schedule, "names": cut.by_name}

    def prune(
        self,
        older_than: dt.timedelta | None = None,
        *,
        batch: int = ret.DEFAULT_BATCH,
        max_batches: int | None = None,
    ) -> dict[str, int]:
        """Delete finished runs older than ``older_than`` (None: the configured retention)
        and what belongs to them, ``batch`` runs per transaction, until none is left (or
        after ``max_batches``). Returns what was deleted."""
        cut = self._cutoffs(older_than)
        total = ret.Pruned()
        if cut.empty:
            return total.as_dict()
        batches = 0
        while True:
            step = partial(ret.prune_batch_txn, c=cut, batch=batch, after_id=total.last_id)
            done = self._kiln.txn(step)
            total.add(done)
            batches += 1
            if done.runs < batch or (max_batches is not None and batches >= max_batches):
                break
        self._kiln.txn(lambda c: ret.prune_skipped_fires_txn(c, cut))
        return total.as_dict()

    def prune_expired(self) -> int:
        """The controller's step: when due, one batch of ``CONTROLLER_BATCH`` runs by the
        configured retention; the next step is due in ``PRUNE_STEP_S`` if that batch was
        full, else in ``PRUNE_EVERY_S``. Returns the runs deleted."""
        if time.monotonic() < self._next_at:
            return 0
        self._next_at = time.monotonic() + PRUNE_EVERY_S
        try:
            pruned = self.prune(batch=CONTROLLER_BATCH, max_batches=1)
        except sa.exc.SQLAlchemyError:  # retention waits; the controller's work goes on
            log.warning("could not prune finished runs", exc_info=True)
            return 0
        more = pruned["runs"] >= CONTROLLER_BATCH
        self._next_at = time.monotonic() + (PRUNE_STEP_S if more else PRUNE_EVERY_S)
        if pruned["runs"]:
            log.info("retention: pruned %s", pruned)
        return pruned["runs"]
