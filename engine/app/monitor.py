"""``kiln.monitor``: what an operator watches — Kiln's own processes and their heartbeats, the
facts behind the health checks, the dashboard's pages and the metrics' counts. Each method is
one transaction."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kiln.app.database import Database
from kiln.core import audit
from kiln.store import instances as instance_store
from kiln.store import overview
from kiln.store import processes as process_store
from kiln.store.db import aware, utcnow
from kiln.store.metrics import MetricRows, metric_rows
from kiln.store.scheduler_state import StoredScheduler, load_txn

# The dashboard lists processes heard from within this horizon, live or silent.
PROCESS_HORIZON_S = 3600


@dataclass(frozen=True)
class LiveProcess:
    id: str
    kind: str
    concurrency: int  # worker threads
    heartbeat_at: dt.datetime  # UTC
    info: Any = None  # a worker's: the queues it consumes (``kiln.core.pools.worker_info``)


class Monitor:
    def __init__(self, kiln: Database) -> None:
        self._kiln = kiln

    # --- Kiln's own processes ---------------------------------------------------------

    @staticmethod
    def new_process_id(kind: str) -> str:
        """A fresh id for a process of ``kind`` (``worker``, ``controller``, ``web``) on this
        host: ``kind:hostname:pid:random``."""
        return process_store.new_process_id(kind)

    def register_process(
        self, process_id: str, kind: str, *, concurrency: int = 1, info: Any = None
    ) -> None:
        """Record that this process started (``concurrency``: its worker threads); the events
        it causes from now on name it (``kiln.core.audit``)."""
        audit.set_process_actor(process_id)
        self._kiln.txn(
            lambda c: process_store.register_process_txn(
                c, process_id, kind, concurrency=concurrency, info=info
            )
        )

    def heartbeat_process(self, process_id: str) -> bool:
        """Say the process is alive; False when it is unknown or was marked stopped."""
        return self._kiln.txn(lambda c: process_store.heartbeat_process_txn(c, process_id))

    def stop_process(self, process_id: str) -> None:
        """Record that the process stopped on purpose."""
        self._kiln.txn(lambda c: process_store.stop_process_txn(c, process_id))

    def live_processes(self, kind: str, *, stale_after_s: float) -> list[LiveProcess]:
        """Processes of ``kind`` that heartbeated within ``stale_after_s`` and did not stop."""
        rows = self._kiln.read(
            lambda c: process_store.live_processes(c, kind, stale_after_s=stale_after_s)
        )
        return [
            LiveProcess(r.id, r.kind, r.concurrency, aware(r.heartbeat_at), r.info) for r in rows
        ]

    # --- health -----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise :class:`~kiln.core.errors.DatabaseUnavailable` unless the database answers."""
        self._kiln.read(overview.ping)

    def instance_health(self) -> dict[str, Any]:
        """``live``, ``lost`` and ``registered`` instance counts, and
        ``unserved_model_types``: model types of ready tasks that no live instance serves."""
        return self._kiln.read(overview.instance_health)

    # --- the dashboard ----------------------------------------------------------------

    def runs_overview(
        self, *, status: str = "", query: str = "", limit: int = 100, **filters: Any
    ) -> tuple[list[dict[str, Any]], dict[int, dict[str, int]], dict[str, int]]:
        """The newest runs (optionally of one ``status``, whose name contains ``query``, and
        created after / before a time or with a task of a ``handler``: ``created_after``,
        ``created_before``, ``handler``), each run's task counts by state, and how many runs
        are in each state overall."""
        return self._kiln.read(
            lambda c: overview.runs_page(c, status=status, query=query, limit=limit, **filters)
        )

    def pipeline_of_workflow(self, workflow_id: int) -> int | None:
        """The id of the pipeline the run backs, or None."""
        return self._kiln.read(lambda c: overview.pipeline_of_workflow(c, workflow_id))

    def task_name(self, task_id: int) -> str | None:
        """A task's name by its id, or None (the dashboard names a child run's parent task)."""
        return self._kiln.read(lambda c: overview.task_name(c, task_id))

    def last_operations(self, pipeline_ids: list[int]) -> dict[int, dict[str, Any]]:
        """The newest operation of each listed pipeline, by pipeline id (pipelines without
        one are left out)."""
        return self._kiln.read(lambda c: overview.last_operations(c, pipeline_ids))

    def instances_overview(
        self, now: dt.datetime | None = None
    ) -> tuple[list[dict[str, Any]], dict[int, tuple[float, int]], list[dict[str, Any]]]:
        """Every registered instance, each one's predicted backlog ``(seconds, tasks)`` by
        instance id, and the Kiln processes heard from within the last hour."""
        at = now or utcnow()

        def read(c: sa.Connection) -> Any:
            return (
                instance_store.list_instances(c),
                overview.instance_backlogs(c, at),
                process_store.recent_processes(c, horizon_s=PROCESS_HORIZON_S),
            )

        return self._kiln.read(read)

    # --- metrics ----------------------------------------------------------------------

    def metric_rows(
        self, *, duration_buckets: Sequence[float], latency_buckets: Sequence[float]
    ) -> tuple[MetricRows, StoredScheduler]:
        """The counts behind every metric and the scheduler's stored state, in one read."""
        return self._kiln.read(
            lambda c: (
                metric_rows(c, duration_buckets=duration_buckets, latency_buckets=latency_buckets),
                load_txn(c),
            )
        )
