"""Prometheus metrics of a whole Kiln deployment, computed from the database at scrape time.

Why from the database and not from counters inside each process: every fact these metrics
count is already written to the database by the process that knows it — a worker records
each attempt's start, end and outcome (``task_attempts``), the controller records lost
leases as ``lost`` attempts and quarantines as failed tasks, instances heartbeat their
queues, processes heartbeat into ``processes``. Reading those rows gives the same numbers
whichever web process is scraped, survives SIGKILLed workers (whose in-memory counters would
vanish with them, exactly when they matter) and needs no multiprocess directory or
push gateway. Counters derived from rows drop if rows are deleted (a workflow run deleted
with its tasks); Prometheus treats that as a counter reset.

What only a worker process knows and is *not* here: Dramatiq's per-message broker traffic and
the process's own CPU and memory. Liveness of every process is here (``kiln_processes``,
from their heartbeats); broker reachability is in ``GET /health/detailed``.

:class:`KilnCollector` is a prometheus-client custom collector: register it in a
``CollectorRegistry`` and each ``generate_latest`` runs :func:`collect_families` once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from kiln.core.errors import DatabaseUnavailable
from kiln.store.db import aware, utcnow
from kiln.store.schema import (
    instances,
    operations,
    processes,
    task_attempts,
    task_dependencies,
    tasks,
    workflows,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)

log = logging.getLogger("kiln.metrics")
# Seconds; tasks range from milliseconds (bench handlers) to hours (pipeline shards).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def seconds_between(conn: sa.Connection, start: Any, end: Any) -> sa.ColumnElement[float]:
    """``end - start`` in seconds, in SQL, on PostgreSQL and SQLite."""
    if conn.dialect.name == "postgresql":
        return sa.func.extract("epoch", end - start)  # type: ignore[return-value]  # numeric
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _histogram_rows(
    conn: sa.Connection,
    value: sa.ColumnElement[float],
    labels: Sequence[sa.ColumnElement[Any]],
    buckets: Sequence[float],
    from_: Any,
    where: Sequence[sa.ColumnElement[bool]],
) -> list[Any]:
    """One row per label combination: the labels, ``n``, ``total`` and ``b0..bk`` (how many
    values are <= each bucket bound), aggregated by the database."""
    v = (
        sa.func.greatest(value, 0.0)
        if conn.dialect.name == "postgresql"
        else sa.func.max(value, 0.0)
    )
    columns = [
        *labels,
        sa.func.count().label("n"),
        sa.func.coalesce(sa.func.sum(v), 0.0).label("total"),
        *(
            sa.func.sum(sa.case((v <= bound, 1), else_=0)).label(f"b{i}")
            for i, bound in enumerate(buckets)
        ),
    ]
    return list(
        conn.execute(sa.select(*columns).select_from(from_).where(*where).group_by(*labels))
    )


def _histogram(
    name: str, doc: str, label_names: list[str], rows: list[Any], buckets: Sequence[float]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=label_names)
    for r in rows:
        pairs = [(_bound(b), int(getattr(r, f"b{i}") or 0)) for i, b in enumerate(buckets)]
        pairs.append(("+Inf", int(r.n)))
        family.add_metric(
            [str(getattr(r, n) or "") for n in label_names], pairs, sum_value=float(r.total)
        )
    return family


def _bound(b: float) -> str:
    return repr(float(b))


def _model_type() -> sa.ColumnElement[str]:
    return sa.func.coalesce(tasks.c.model_type, "").label("model_type")


def collect_families(conn: sa.Connection, *, process_stale_after_s: float = 15.0) -> list[Metric]:
    """Every Kiln metric, read in one connection."""
    out: list[Metric] = []
    mt = _model_type()

    # --- tasks and runs -------------------------------------------------------------------
    g = GaugeMetricFamily(
        "kiln_tasks",
        "Tasks by state and model type (model_type is empty for handler tasks).",
        labels=["state", "model_type"],
    )
    for state, model_type, n in conn.execute(
        sa.select(tasks.c.status, mt, sa.func.count()).group_by(tasks.c.status, mt)
    ).all():
        g.add_metric([state, model_type], n)
    out.append(g)

    g = GaugeMetricFamily("kiln_workflows", "Workflow runs by state.", labels=["state"])
    for state, n in conn.execute(
        sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
    ).all():
        g.add_metric([state], n)
    out.append(g)

    g = GaugeMetricFamily(
        "kiln_ready_tasks",
        "Tasks waiting in Kiln's own queue (ready or retrying), by model type.",
        labels=["model_type"],
    )
    for model_type, n in conn.execute(
        sa.select(mt, sa.func.count()).where(tasks.c.status.in_(["ready", "retrying"])).group_by(mt)
    ).all():
        g.add_metric([model_type], n)
    out.append(g)

    # --- attempts: outcomes, retries, lease recoveries, durations --------------------------
    c = CounterMetricFamily(
        "kiln_task_attempts",
        "Attempts (claims of a task by a worker) by outcome: running, succeeded, failed, "
        "timed_out, lost, stale.",
        labels=["outcome"],
    )
    by_outcome: dict[str, int] = dict(
        conn.execute(
            sa.select(task_attempts.c.outcome, sa.func.count()).group_by(task_attempts.c.outcome)
        ).all()
    )
    for outcome, n in sorted(by_outcome.items()):
        c.add_metric([outcome], n)
    out.append(c)

    retries = conn.execute(
        sa.select(sa.func.count()).select_from(task_attempts).where(task_attempts.c.attempt > 1)
    ).scalar_one()
    out.append(
        CounterMetricFamily(
            "kiln_task_retries", "Attempts beyond a task's first (retries).", value=retries
        )
    )
    out.append(
        CounterMetricFamily(
            "kiln_lease_recoveries",
            "Running attempts whose lease expired (worker died or hung) and that the "
            "controller recovered (attempt outcome 'lost').",
            value=by_outcome.get("lost", 0),
        )
    )
    quarantined = conn.execute(
        sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.status == "failed", tasks.c.error.like("quarantined:%"))
    ).scalar_one()
    out.append(
        CounterMetricFamily(
            "kiln_tasks_quarantined",
            "Tasks failed because their message was sent many times and never claimed.",
            value=quarantined,
        )
    )

    joined = task_attempts.join(tasks, tasks.c.id == task_attempts.c.task_id)
    rows = _histogram_rows(
        conn,
        seconds_between(conn, task_attempts.c.started_at, task_attempts.c.finished_at),
        [task_attempts.c.outcome, mt],
        DURATION_BUCKETS,
        joined,
        [task_attempts.c.finished_at.is_not(None)],
    )
    out.append(
        _histogram(
            "kiln_task_duration_seconds",
            "Run time of finished attempts (claim to result), by outcome and model type.",
            ["outcome", "model_type"],
            rows,
            DURATION_BUCKETS,
        )
    )

    first = task_attempts.join(tasks, tasks.c.id == task_attempts.c.task_id).join(
        workflows, workflows.c.id == tasks.c.workflow_id
    )
    rows = _histogram_rows(
        conn,
        seconds_between(conn, workflows.c.created_at, task_attempts.c.started_at),
        [mt],
        LATENCY_BUCKETS,
        first,
        [
            task_attempts.c.attempt == 1,
            ~sa.exists().where(task_dependencies.c.task_id == tasks.c.id),
        ],
    )
    out.append(
        _histogram(
            "kiln_task_submit_to_start_seconds",
            "From submission of the run to the start of a task's first attempt, for tasks "
            "without dependencies (their wait is all queueing and dispatch).",
            ["model_type"],
            rows,
            LATENCY_BUCKETS,
        )
    )

    # --- predictions ----------------------------------------------------------------------
    s = SummaryMetricFamily(
        "kiln_prediction_abs_error_seconds",
        "|actual_s - predicted_s| of finished model_type tasks that had a prediction.",
        labels=["model_type"],
    )
    ratio = GaugeMetricFamily(
        "kiln_prediction_actual_over_predicted",
        "Mean actual_s / predicted_s by model type (1 is perfect, above 1 means slower than "
        "predicted).",
        labels=["model_type"],
    )
    predicted = [tasks.c.predicted_s.is_not(None), tasks.c.actual_s.is_not(None)]
    for model_type, n, abs_sum, mean_ratio in conn.execute(
        sa.select(
            mt,
            sa.func.count(),
            sa.func.sum(sa.func.abs(tasks.c.actual_s - tasks.c.predicted_s)),
            sa.func.avg(tasks.c.actual_s / sa.func.nullif(tasks.c.predicted_s, 0.0)),
        )
        .where(*predicted)
        .group_by(mt)
    ).all():
        s.add_metric([model_type], count_value=n, sum_value=float(abs_sum or 0.0))
        if mean_ratio is not None:
            ratio.add_metric([model_type], float(mean_ratio))
    out.extend([s, ratio])

    # --- operations -----------------------------------------------------------------------
    g = GaugeMetricFamily(
        "kiln_operations",
        "Interactive-control operations by type and status.",
        labels=["operation", "status"],
    )
    for operation, status, n in conn.execute(
        sa.select(operations.c.operation, operations.c.status, sa.func.count()).group_by(
            operations.c.operation, operations.c.status
        )
    ).all():
        g.add_metric([operation, status], n)
    out.append(g)

    # --- instances ------------------------------------------------------------------------
    out.extend(_instance_families(conn))

    # --- processes ------------------------------------------------------------------------
    now = utcnow()
    g = GaugeMetricFamily(
        "kiln_processes",
        f"Kiln processes alive (heartbeat within {process_stale_after_s:g}s, not stopped) by kind.",
        labels=["kind"],
    )
    live: dict[str, int] = {"worker": 0, "controller": 0, "web": 0}
    threads = 0
    for kind, beat, concurrency in conn.execute(
        sa.select(processes.c.kind, processes.c.heartbeat_at, processes.c.concurrency).where(
            processes.c.stopped_at.is_(None)
        )
    ).all():
        if (now - aware(beat)).total_seconds() <= process_stale_after_s:
            live[kind] = live.get(kind, 0) + 1
            if kind == "worker":
                threads += concurrency
    for kind, n in sorted(live.items()):
        g.add_metric([kind], n)
    out.append(g)
    out.append(
        GaugeMetricFamily(
            "kiln_worker_threads", "Worker threads of live worker processes.", value=threads
        )
    )

    # --- scheduler ------------------------------------------------------------------------
    out.extend(_scheduler_families(conn))
    return out


def _instance_families(conn: sa.Connection) -> Iterator[Metric]:
    from kiln.store.instances import lost_after_s

    running = (
        sa.select(tasks.c.instance_id, sa.func.count().label("n"))
        .where(tasks.c.status == "running", tasks.c.instance_id.is_not(None))
        .group_by(tasks.c.instance_id)
        .subquery()
    )
    rows = conn.execute(
        sa.select(
            instances.c.id,
            instances.c.name,
            instances.c.model_type,
            instances.c.status,
            instances.c.slots,
            instances.c.queue_size,
            instances.c.active_tasks,
            instances.c.heartbeat_at,
            sa.func.coalesce(running.c.n, 0).label("in_flight"),
        )
        .select_from(instances.outerjoin(running, running.c.instance_id == instances.c.id))
        .where(instances.c.status != "stopped")
        .order_by(instances.c.id)
    ).all()
    names = ["instance_id", "instance", "model_type"]
    families = {
        "in_flight": GaugeMetricFamily(
            "kiln_instance_tasks_in_flight",
            "Kiln tasks running on each instance (placed there by a worker).",
            labels=names,
        ),
        "queue_size": GaugeMetricFamily(
            "kiln_instance_queue_depth",
            "The instance's own queue length, as last reported by its heartbeat.",
            labels=names,
        ),
        "slots": GaugeMetricFamily(
            "kiln_instance_slots", "Concurrent tasks the instance accepts now.", labels=names
        ),
        "up": GaugeMetricFamily(
            "kiln_instance_up",
            "1 if the instance is running and heartbeated within KILN_INSTANCE_LOST_AFTER_S.",
            labels=names,
        ),
    }
    now = utcnow()
    for r in rows:
        labels = [str(r.id), r.name, r.model_type]
        families["in_flight"].add_metric(labels, r.in_flight)
        families["queue_size"].add_metric(labels, r.queue_size)
        families["slots"].add_metric(labels, r.slots)
        fresh = (now - aware(r.heartbeat_at)).total_seconds() <= lost_after_s()
        families["up"].add_metric(labels, 1 if r.status == "running" and fresh else 0)
    yield from families.values()


def _scheduler_families(conn: sa.Connection) -> Iterator[Metric]:
    from kiln.app.scheduler import load_txn

    stored = load_txn(conn)
    info = InfoMetricFamily("kiln_scheduler", "The scheduler's current policy and placement.")
    info.add_metric(
        [],
        {
            "policy": stored.policy,
            "placement": stored.placement,
            "quantum_micros": str(stored.state.quantum_micros),
        },
    )
    yield info
    for name, doc, value in (
        ("kiln_scheduler_scheduled", "Tasks the scheduler handed out.", "total_scheduled"),
        (
            "kiln_scheduler_context_switches",
            "Times the next task came from another workflow than the previous one.",
            "context_switches",
        ),
        ("kiln_scheduler_preemptions", "Round-robin quanta that expired.", "preemptions"),
    ):
        yield CounterMetricFamily(name, doc, value=getattr(stored.state, value))


class KilnCollector:
    """prometheus-client collector over a :class:`~engine.runtime.Kiln`. When the database
    cannot be reached it reports ``kiln_database_up 0`` (and nothing else) instead of
    failing the scrape."""

    def __init__(self, kiln: Any) -> None:
        self.kiln = kiln

    def describe(self) -> list[Metric]:
        return []  # names are only known after a query; never collect at registration

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        stale = max(10.0, self.kiln.settings.lease_s)
        try:
            families = self.kiln.read(lambda c: collect_families(c, process_stale_after_s=stale))
            up = 1
        except (DatabaseUnavailable, sa.exc.OperationalError) as exc:
            log.warning("metrics: database unavailable: %s", str(exc).splitlines()[0])
            families, up = [], 0
        yield GaugeMetricFamily(
            "kiln_database_up", "1 if the last scrape could read the database.", value=up
        )
        yield from families
        yield GaugeMetricFamily(
            "kiln_scrape_duration_seconds",
            "Time spent computing these metrics from the database.",
            value=time.perf_counter() - started,
        )
