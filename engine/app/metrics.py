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
``CollectorRegistry`` and each ``generate_latest`` reads the counts once
(:meth:`kiln.app.monitor.Monitor.metric_rows`) and builds the families from them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from kiln.core.errors import DatabaseUnavailable
from kiln.store.clauses import lost_after_s
from kiln.store.db import aware, utcnow
from kiln.store.metrics import MetricRows
from kiln.store.scheduler_state import StoredScheduler

log = logging.getLogger("kiln.metrics")
# Seconds; tasks range from milliseconds (bench handlers) to hours (pipeline shards).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# Label cardinality of the per-handler families: the handlers (and queues) with the most
# attempts keep their name, the rest are summed under "other".
TOP_HANDLERS = 20
TOP_QUEUES = 10
OTHER = "other"


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


def families(
    rows: MetricRows, scheduler: StoredScheduler, *, process_stale_after_s: float = 15.0
) -> list[Metric]:
    """Every Kiln metric, from the counts of one read."""
    out: list[Metric] = []

    # --- tasks and runs -------------------------------------------------------------------
    g = GaugeMetricFamily(
        "kiln_tasks",
        "Tasks by state and model type (model_type is empty for handler tasks).",
        labels=["state", "model_type"],
    )
    for state, model_type, n in rows.tasks:
        g.add_metric([state, model_type], n)
    out.append(g)

    g = GaugeMetricFamily("kiln_workflows", "Workflow runs by state.", labels=["state"])
    for state, n in rows.workflows:
        g.add_metric([state], n)
    out.append(g)

    g = GaugeMetricFamily(
        "kiln_ready_tasks",
        "Tasks waiting in Kiln's own queue (ready or retrying), by model type.",
        labels=["model_type"],
    )
    for model_type, n in rows.ready:
        g.add_metric([model_type], n)
    out.append(g)

    # --- attempts: outcomes, retries, lease recoveries, durations --------------------------
    c = CounterMetricFamily(
        "kiln_task_attempts",
        "Attempts (claims of a task by a worker) by outcome: running, succeeded, failed, "
        "timed_out, lost, stale.",
        labels=["outcome"],
    )
    for outcome, n in sorted(rows.attempts_by_outcome.items()):
        c.add_metric([outcome], n)
    out.append(c)
    out.append(
        CounterMetricFamily(
            "kiln_task_retries", "Attempts beyond a task's first (retries).", value=rows.retries
        )
    )
    out.append(
        CounterMetricFamily(
            "kiln_lease_recoveries",
            "Running attempts whose lease expired (worker died or hung) and that the "
            "controller recovered (attempt outcome 'lost').",
            value=rows.attempts_by_outcome.get("lost", 0),
        )
    )
    out.append(
        GaugeMetricFamily(
            "kiln_tasks_lease_expired",
            "Queued or running tasks whose lease has ended: a controller recovers them within "
            "seconds, so a lasting non-zero value means none is running.",
            value=rows.expired_leases,
        )
    )
    out.append(
        GaugeMetricFamily(
            "kiln_oldest_ready_task_age_seconds",
            "How long the oldest ready task has waited for dispatch (0: none is waiting).",
            value=rows.oldest_ready_s,
        )
    )
    out.append(
        CounterMetricFamily(
            "kiln_tasks_quarantined",
            "Tasks failed because their message was sent many times and never claimed.",
            value=rows.quarantined,
        )
    )
    out.append(
        _histogram(
            "kiln_task_duration_seconds",
            "Run time of finished attempts (claim to result), by outcome and model type.",
            ["outcome", "model_type"],
            rows.durations,
            DURATION_BUCKETS,
        )
    )
    out.append(
        _histogram(
            "kiln_task_submit_to_start_seconds",
            "From submission of the run to the start of a task's first attempt, for tasks "
            "without dependencies (their wait is all queueing and dispatch).",
            ["model_type"],
            rows.submit_to_start,
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
    for model_type, n, abs_sum, mean_ratio in rows.predictions:
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
    for operation, status, n in rows.operations:
        g.add_metric([operation, status], n)
    out.append(g)

    out.extend(_handler_families(rows))
    out.extend(_instance_families(rows.instances))
    out.extend(_process_families(rows.processes, process_stale_after_s))
    out.extend(_scheduler_families(scheduler))
    return out


def top(counts: dict[str, int], n: int) -> Callable[[str], str]:
    """Maps a label to itself if it is among the ``n`` largest of ``counts`` (ties by name),
    else to ``other``."""
    kept = set(sorted(counts, key=lambda k: (-counts[k], k))[:n])
    return lambda label: label if label in kept else OTHER


def _handler_families(rows: MetricRows) -> Iterator[Metric]:
    by_handler: dict[str, int] = defaultdict(int)
    by_queue: dict[str, int] = defaultdict(int)
    for handler, queue, _outcome, n in rows.handler_attempts:
        by_handler[handler] += n
        by_queue[queue] += n
    h, q = top(by_handler, TOP_HANDLERS), top(by_queue, TOP_QUEUES)

    attempts: dict[tuple[str, str, str], int] = defaultdict(int)
    for handler, queue, outcome, n in rows.handler_attempts:
        attempts[h(handler), q(queue), outcome] += n
    c = CounterMetricFamily(
        "kiln_handler_attempts",
        f"Attempts by handler, queue and outcome (the {TOP_HANDLERS} handlers and "
        f"{TOP_QUEUES} queues with the most attempts; the rest as 'other').",
        labels=["handler", "queue", "outcome"],
    )
    for key, n in sorted(attempts.items()):
        c.add_metric(list(key), n)
    yield c

    buckets = len(DURATION_BUCKETS)
    summed: dict[tuple[str, str], list[float]] = {}
    for r in rows.handler_durations:
        into = summed.setdefault((h(r.handler), q(r.queue)), [0.0] * (buckets + 2))
        for i, v in enumerate([r.n, r.total, *(getattr(r, f"b{i}") for i in range(buckets))]):
            into[i] += float(v or 0)
    folded = [
        SimpleNamespace(
            handler=handler, queue=queue, n=v[0], total=v[1],
            **{f"b{i}": v[2 + i] for i in range(buckets)},
        )
        for (handler, queue), v in sorted(summed.items())
    ]  # fmt: skip
    yield _histogram(
        "kiln_handler_duration_seconds",
        "Run time of finished attempts (claim to result) by handler and queue (top handlers "
        "and queues, the rest as 'other').",
        ["handler", "queue"],
        folded,
        DURATION_BUCKETS,
    )

    retries: dict[str, int] = defaultdict(int)
    for handler, n in rows.handler_retries:
        retries[h(handler)] += n
    c = CounterMetricFamily(
        "kiln_handler_retries",
        "Attempts beyond a task's first (retries), by handler (top handlers, the rest as 'other').",
        labels=["handler"],
    )
    for handler, n in sorted(retries.items()):
        c.add_metric([handler], n)
    yield c


def _instance_families(rows: list[Any]) -> Iterator[Metric]:
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


def _process_families(rows: list[Any], stale_after_s: float) -> Iterator[Metric]:
    now = utcnow()
    g = GaugeMetricFamily(
        "kiln_processes",
        f"Kiln processes alive (heartbeat within {stale_after_s:g}s, not stopped) by kind.",
        labels=["kind"],
    )
    live: dict[str, int] = {"worker": 0, "controller": 0, "web": 0}
    threads = 0
    for kind, beat, concurrency in rows:
        if (now - aware(beat)).total_seconds() <= stale_after_s:
            live[kind] = live.get(kind, 0) + 1
            if kind == "worker":
                threads += concurrency
    for kind, n in sorted(live.items()):
        g.add_metric([kind], n)
    yield g
    yield GaugeMetricFamily(
        "kiln_worker_threads", "Worker threads of live worker processes.", value=threads
    )


def _scheduler_families(stored: StoredScheduler) -> Iterator[Metric]:
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
    """prometheus-client collector over a :class:`~kiln.app.runtime.Kiln`. When the database
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
            rows, scheduler = self.kiln.monitor.metric_rows(
                duration_buckets=DURATION_BUCKETS, latency_buckets=LATENCY_BUCKETS
            )
            out = families(rows, scheduler, process_stale_after_s=stale)
            up = 1
        except (DatabaseUnavailable, sa.exc.OperationalError) as exc:
            log.warning("metrics: database unavailable: %s", str(exc).splitlines()[0])
            out, up = [], 0
        yield GaugeMetricFamily(
            "kiln_database_up", "1 if the last scrape could read the database.", value=up
        )
        yield from out
        yield GaugeMetricFamily(
            "kiln_scrape_duration_seconds",
            "Time spent computing these metrics from the database.",
            value=time.perf_counter() - started,
        )
