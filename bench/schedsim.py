"""The scheduling simulator's engine: jobs, predictors and the discrete-event replay.

Used by ``bench/scheduling.py`` (any CSV trace) and ``bench/scheduling_grid.py`` (the
generated trace family). Every ordering decision goes through ``kiln.core.scheduling``'s
:class:`~kiln.core.scheduling.queue.ReadyQueue` over a :class:`~kiln.core.scheduling.Scheduler`,
the code the controller runs; predictions come from Kiln's online model trained only on jobs
that have finished so far in the simulation.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kiln.core.prediction import (  # noqa: E402
    Estimate,
    GroupHistory,
    OnlineQuantileModel,
    Prediction,
    estimate,
    quantile_value,
)
from kiln.core.scheduling import (  # noqa: E402
    InstanceLoad,
    QueuedItem,
    Scheduler,
    add_work,
    finish_work,
    place,
)
from kiln.core.scheduling.queue import ReadyQueue  # noqa: E402

DEFAULT_MODEL = "llm"
Feature = float | str


@dataclass
class Job:
    index: int
    arrival: float
    duration: float
    features: dict[str, Feature]
    group: str | None = None
    input_tokens: float | None = None
    model_type: str = DEFAULT_MODEL
    hardware: str | None = None
    label_mean: float | None = None  # E[duration | features], when the trace knows it

    @property
    def item_id(self) -> str:
        # Zero-padded so that ties broken by id follow arrival order, as in the service.
        return f"{self.index:09d}"


# -- predictors -----------------------------------------------------------------------------


class KilnPredictor:
    """Kiln's online quantile model plus per-session history, fed finished jobs only."""

    def __init__(self, feature_names: list[str], use_history: bool) -> None:
        names = (["group_history"] if use_history else []) + feature_names
        self.model = OnlineQuantileModel(
            features=names, buckets_per_octave=8, prior_samples=5, window=1024
        )
        self.history = GroupHistory(alpha=0.5) if use_history else None
        self.observed = 0

    def _features(self, job: Job) -> dict[str, Feature | None]:
        features: dict[str, Feature | None] = dict(job.features)
        if self.history is not None:
            features["group_history"] = self.history.feature(job.group)
        return features

    def predict(self, job: Job) -> Prediction | None:
        return self.model.predict(job.model_type, job.hardware, self._features(job))

    def observe(self, job: Job) -> None:
        self.observed += 1
        self.model.observe(job.model_type, job.hardware, job.duration, self._features(job))
        if self.history is not None:
            self.history.observe(job.group, job.duration)


def _feature_key(job: Job, per_octave: float = 1.0) -> tuple:
    """Model, hardware and every feature (numbers by octave fraction, categories as is)."""
    parts: list = [job.model_type, job.hardware]
    for name in sorted(job.features):
        value = job.features[name]
        if isinstance(value, str):
            parts.append(value)
        else:
            parts.append(math.floor(math.log2(1 + max(value, 0.0)) * per_octave))
    return tuple(parts)


class NaivePredictor:
    """Running median of finished durations per bucket of the job's features (numbers by
    octave, categories as they are), falling back to the model type's median."""

    def __init__(self) -> None:
        self.buckets: dict[tuple, list[float]] = {}
        self.by_model: dict[str, list[float]] = {}
        self.observed = 0

    def predict(self, job: Job) -> Prediction | None:
        data = self.buckets.get(_feature_key(job)) or self.by_model.get(job.model_type)
        if not data:
            return None
        return Prediction((0.5,), (data[len(data) // 2],), method="learned")

    def observe(self, job: Job) -> None:
        self.observed += 1
        bisect.insort(self.buckets.setdefault(_feature_key(job), []), job.duration)
        bisect.insort(self.by_model.setdefault(job.model_type, []), job.duration)


class OraclePredictor:
    """The true duration: only for the oracle bound, never for a Kiln policy."""

    observed = 0

    def predict(self, job: Job) -> Prediction:
        return Prediction((0.5,), (job.duration,), method="external")

    def observe(self, job: Job) -> None:
        pass


class LabelOracle:
    """The information bound: each job's true mean size given exactly the features the
    predictor sees. The trace's ``label_mean`` when it knows it (generated traces); otherwise
    the hindsight mean over the whole trace of the job's feature bucket (Kiln's bucket width,
    shrunk towards the coarser buckets in proportion to how few jobs the bucket holds, as the
    online model does)."""

    observed = 0

    def __init__(self, jobs: list[Job], feature_names: list[str], prior: float = 5.0) -> None:
        self.means: dict[int, float] = {}
        if all(j.label_mean is not None for j in jobs):
            self.means = {j.index: j.label_mean for j in jobs}  # type: ignore[misc]
            return
        model = OnlineQuantileModel(features=feature_names, buckets_per_octave=8)
        sums: dict[tuple, list[float]] = {}
        paths = {}
        for job in jobs:
            path = (job.model_type, job.hardware) + tuple(
                model.bucket_of(job.features.get(n)) for n in feature_names
            )
            paths[job.index] = path
            for depth in range(2, len(path) + 1):
                acc = sums.setdefault(path[:depth], [0.0, 0])
                acc[0] += job.duration
                acc[1] += 1
        for job in jobs:
            path = paths[job.index]
            total, n = sums[path[:2]]
            mean = total / n
            for depth in range(3, len(path) + 1):
                total, n = sums[path[:depth]]
                w = n / (n + prior)
                mean = w * total / n + (1 - w) * mean
            self.means[job.index] = mean

    def predict(self, job: Job) -> Prediction:
        return Prediction((0.5,), (self.means[job.index],), method="external")

    def observe(self, job: Job) -> None:
        pass


class ExactFollowUps(KilnPredictor):
    """A bound, not a predictor: the true duration for a job whose session already has a
    finished request, Kiln's prediction otherwise."""

    def predict(self, job: Job) -> Prediction | None:
        if self.history is not None and self.history.feature(job.group) is not None:
            return Prediction((0.5,), (job.duration,), method="external")
        return super().predict(job)


class NoPredictor:
    observed = 0

    def predict(self, job: Job) -> None:
        return None

    def observe(self, job: Job) -> None:
        pass


# -- simulation -----------------------------------------------------------------------------


@dataclass
class Outcome:
    completion: list[float]  # finish − arrival per job index, seconds
    # (predicted expected, predicted p90, true duration, job index) of every dispatched job
    # that had a prediction, as it was when the job started.
    predictions: list[tuple[float, float, float, int]] = field(default_factory=list)


def _refresh_step(observed: int) -> int:
    """Finishes until the next re-prediction of the waiting jobs: often while the model is
    young, every 256 finishes at most once it has seen a few thousand."""
    return max(8, min(observed // 4, 256))


def simulate(
    jobs: list[Job],
    scheduler: Scheduler,
    predictor,
    instances: int,
    placement: str | None = None,
    refresh: bool = True,
) -> Outcome:
    """Replay ``jobs`` (sorted by arrival) on ``instances`` identical non-preemptive
    instances. Events at the same instant are all applied (finishes first, so the predictor
    learns from them) before any dispatch decision. Waiting jobs are re-predicted as the
    predictor learns (``refresh``)."""
    ids = [f"i{k}" for k in range(instances)]
    loads = {iid: InstanceLoad(iid) for iid in ids}
    idle = set(ids)
    queues = {iid: ReadyQueue(scheduler) for iid in ids} if placement else None
    shared = ReadyQueue(scheduler)
    by_id: dict[str, Job] = {}
    running: list[tuple[float, int, str, QueuedItem]] = []  # (finish, seq, instance, item)
    out = Outcome([0.0] * len(jobs))
    turn = seq = next_arrival = 0
    next_refresh = _refresh_step(0)
    n = len(jobs)

    def repredict(item: QueuedItem) -> QueuedItem:
        return replace(item, predicted=predictor.predict(by_id[item.id]))

    while next_arrival < n or running:
        arrival_t = jobs[next_arrival].arrival if next_arrival < n else math.inf
        now = min(arrival_t, running[0][0] if running else math.inf)
        while running and running[0][0] <= now:
            _, _, iid, item = heapq.heappop(running)
            job = by_id.pop(item.id)
            out.completion[job.index] = now - job.arrival
            scheduler.record_finish(item, job.duration, now)
            predictor.observe(job)
            loads[iid] = finish_work(loads[iid], _task_estimate(item), job.duration)
            idle.add(iid)
        if refresh and predictor.observed >= next_refresh:
            for queue in queues.values() if queues else (shared,):
                queue.refresh(repredict)
            next_refresh = predictor.observed + _refresh_step(predictor.observed)
        while next_arrival < n and jobs[next_arrival].arrival <= now:
            job = jobs[next_arrival]
            next_arrival += 1
            item = QueuedItem(
                id=job.item_id,
                group=job.group,
                priority=0,
                enqueued_at=job.arrival,
                predicted=predictor.predict(job),
            )
            by_id[item.id] = job
            if queues:
                target = place(_task_estimate(item), list(loads.values()), placement, turn=turn)
                turn += 1
                loads[target] = add_work(loads[target], _task_estimate(item))
                queues[target].push(item, now)
            else:
                shared.push(item, now)
        for iid in sorted(idle):
            queue = queues[iid] if queues else shared
            item = queue.pop(now)
            if item is None:
                continue
            if not queues:
                loads[iid] = add_work(loads[iid], _task_estimate(item))
            idle.discard(iid)
            scheduler.record_start(item, now)
            job = by_id[item.id]
            if item.predicted is not None:
                out.predictions.append(
                    (
                        estimate(item.predicted).expected,
                        quantile_value(item.predicted, 0.9),
                        job.duration,
                        job.index,
                    )
                )
            seq += 1
            heapq.heappush(running, (now + job.duration, seq, iid, item))
    return out


def _task_estimate(item: QueuedItem) -> Estimate:
    return estimate(item.predicted) if item.predicted else Estimate(0.0, 0.0)


# -- figures --------------------------------------------------------------------------------


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (ties get their average rank); None below 3 pairs or if constant."""
    if len(xs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
                end += 1
            for k in range(start, end + 1):
                out[order[k]] = (start + end) / 2
            start = end + 1
        return out

    try:
        return statistics.correlation(ranks(xs), ranks(ys))
    except statistics.StatisticsError:
        return None


@dataclass
class Result:
    label: str
    mean: float
    p50: float
    p99: float
    seconds: float
    rho: float | None = None
    p90_cover: float | None = None  # share of jobs at or under their predicted p90
    p90_cover_early: float | None = None  # the same over the first 10 % of the trace


def summarise(label: str, outcome: Outcome, seconds: float, n_jobs: int) -> Result:
    ordered = sorted(outcome.completion)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    preds = outcome.predictions
    rho = spearman([p[0] for p in preds], [p[2] for p in preds])
    cover = early = None
    if preds:
        cover = sum(p90 >= d for _, p90, d, _ in preds) / len(preds)
        first = [(p90, d) for _, p90, d, i in preds if i < n_jobs // 10]
        if first:
            early = sum(p90 >= d for p90, d in first) / len(first)
    return Result(label, statistics.fmean(ordered), q[49], q[98], seconds, rho, cover, early)


def capture(policy: Result, fifo: Result, label: Result) -> float | None:
    """(FIFO mean − policy mean) / (FIFO mean − label-oracle mean); None when the label
    oracle gains nothing."""
    gain = fifo.mean - label.mean
    if gain <= 0:
        return None
    return (fifo.mean - policy.mean) / gain


PredictorFactory = Callable[[], object]
