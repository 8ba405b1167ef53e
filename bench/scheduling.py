"""Scheduling simulator: replay a job trace in virtual time through Kiln's policies.

Discrete-event simulation of K identical instances, non-preemptive, one central ready queue
ordered by the policy under test (``--placement`` instead binds each job to an instance's own
queue on arrival, with Kiln's placement code). Every policy runs through the same
``kiln.core.scheduling`` code the service uses. Predictions come from Kiln's online predictor
(``kiln.core.prediction``) trained only on jobs that have finished so far in the simulation, from
input tokens, declared feature columns and the history of the job's session; never from the
output tokens or the true duration of the job being scheduled. ShortestPredicted runs with
the policy's defaults unless ``--aging`` / ``--backlog-factor`` / ... say otherwise. Two
baselines, both pure shortest-predicted-first (no aging, no backlog guard):

- ``naive SPF``: running median of finished durations per input-token octave;
- ``oracle``: shortest-job-first with the true durations (a bound, not a policy).

``--bounds`` adds ``exact follow-ups``: true durations for jobs whose session already has a
finished request, Kiln's prediction otherwise, pure SPF: the most session history could give.
The ``rho`` column is the Spearman rank correlation of each run's predictions (expected time)
with the true durations.

Usage::

    python bench/scheduling.py                       # both shared traces
    python bench/scheduling.py --instances 4 --load 0.9
    python bench/scheduling.py --csv jobs.csv --arrival-col t --arrival-unit seconds \\
        --input-col in --output-col out --coef 1.8,0.0994,30.1 --feature-cols a,b
"""

from __future__ import annotations

import argparse
import bisect
import csv
import heapq
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
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
)
from kiln.core.scheduling import (  # noqa: E402
    InstanceLoad,
    QueuedItem,
    Scheduler,
    ShortestPredicted,
    add_work,
    finish_work,
    place,
)

# duration_ms ≈ a + b·input_tokens + c·output_tokens (Splitwise profile, Llama2-70B fp16).
HARDWARE_COEF = {
    "h100_tp8": (1.8, 0.0994, 30.1),
    "h100_tp2": (1.7, 0.161, 37.2),
    "a100_tp8": (-6.1, 0.182, 44.6),
    "a100_tp2": (8.6, 0.362, 56.1),
}

DEFAULT_TRACES = {
    "azure_llm_2023_conv": {
        "file": "azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv",
        "arrival_col": "TIMESTAMP",
        "arrival_unit": "timestamp",
        "input_col": "ContextTokens",
        "output_col": "GeneratedTokens",
    },
    "mooncake_fast25_conversation": {
        "file": "mooncake_fast25_conversation/conversation_trace.csv",
        "arrival_col": "timestamp_ms",
        "arrival_unit": "ms",
        "input_col": "input_length",
        "output_col": "output_length",
        "session_col": "hash_ids",
    },
}

# ShortestPredicted runs with the policy's own defaults (what the service uses) unless a flag
# overrides them: gentle linear aging plus the backlog guard, which ages an item faster once it
# has waited longer than the predicted work queued (see ShortestPredicted's docstring).
SPF_DEFAULTS = ShortestPredicted()

MODEL_TYPE = "llm"


@dataclass
class Job:
    index: int
    arrival: float
    duration: float
    features: dict[str, float]
    group: str | None = None
    input_tokens: float | None = None


@dataclass
class TraceSpec:
    name: str
    path: Path
    arrival_col: str
    arrival_unit: str = "seconds"
    duration_col: str | None = None
    input_col: str | None = None
    output_col: str | None = None
    coef: tuple[float, float, float] = HARDWARE_COEF["h100_tp8"]
    feature_cols: list[str] = field(default_factory=list)
    session_col: str | None = None
    group_col: str | None = None
    session_min_shared: int = 2


# -- loading --------------------------------------------------------------------------------


def _arrival_seconds(raw: str, unit: str) -> float:
    if unit == "timestamp":
        return datetime.fromisoformat(raw.strip()).timestamp()
    if unit == "ms":
        return float(raw) / 1000.0
    if unit == "seconds":
        return float(raw)
    raise SystemExit(f"--arrival-unit must be timestamp, seconds or ms, not {unit!r}")


class SessionTracker:
    """Conversation sessions from prefix-block hashes (space-separated ids per request).

    A request continues the session of the earlier request that introduced its deepest shared
    prefix block, when it shares at least ``min_shared`` leading blocks (the first block is
    typically a system prompt every request shares). Uses only the request's own input.
    """

    def __init__(self, min_shared: int) -> None:
        self.min_shared = min_shared
        self.block_owner: dict[str, str] = {}

    def session_of(self, index: int, raw: str) -> str:
        blocks = raw.split()
        shared, owner = 0, None
        for depth, block in enumerate(blocks):
            found = self.block_owner.get(block)
            if found is None:
                break
            shared, owner = depth + 1, found
        session = owner if owner is not None and shared >= self.min_shared else f"s{index}"
        for block in blocks[shared:]:
            self.block_owner.setdefault(block, session)
        return session


def load_jobs(spec: TraceSpec, limit: int | None = None) -> list[Job]:
    a, b, c = spec.coef
    sessions = SessionTracker(spec.session_min_shared) if spec.session_col else None
    jobs: list[Job] = []
    with open(spec.path, newline="") as fh:
        for index, row in enumerate(csv.DictReader(fh)):
            if limit is not None and index >= limit:
                break
            input_tokens = float(row[spec.input_col]) if spec.input_col else None
            if spec.duration_col:
                duration = float(row[spec.duration_col])
            else:
                output_tokens = float(row[spec.output_col])
                duration = max(a + b * input_tokens + c * output_tokens, 0.0) / 1000.0
            features = {col: float(row[col]) for col in spec.feature_cols}
            if input_tokens is not None:
                features["input_tokens"] = input_tokens
            group = None
            if sessions is not None:
                group = sessions.session_of(index, row[spec.session_col])
            elif spec.group_col:
                group = row[spec.group_col]
            jobs.append(
                Job(
                    index=index,
                    arrival=_arrival_seconds(row[spec.arrival_col], spec.arrival_unit),
                    duration=duration,
                    features=features,
                    group=group,
                    input_tokens=input_tokens,
                )
            )
    jobs.sort(key=lambda j: (j.arrival, j.index))
    return jobs


def rescale_to_load(jobs: list[Job], instances: int, load: float) -> float:
    """Stretch or compress arrivals so offered load = total work / (instances · span)."""
    t0 = jobs[0].arrival
    span = jobs[-1].arrival - t0
    work = sum(j.duration for j in jobs)
    factor = work / (instances * load * span) if span > 0 else 1.0
    for job in jobs:
        job.arrival = (job.arrival - t0) * factor
    return factor


# -- predictors -----------------------------------------------------------------------------


class KilnPredictor:
    """Kiln's online quantile model plus per-session history, fed finished jobs only."""

    def __init__(self, feature_names: list[str], use_history: bool) -> None:
        names = (["group_history"] if use_history else []) + feature_names
        self.model = OnlineQuantileModel(
            features=names, buckets_per_octave=8, prior_samples=5, window=1024
        )
        self.history = GroupHistory(alpha=0.5) if use_history else None

    def _features(self, job: Job) -> dict[str, float | None]:
        features: dict[str, float | None] = dict(job.features)
        if self.history is not None:
            features["group_history"] = self.history.feature(job.group)
        return features

    def predict(self, job: Job) -> Prediction | None:
        return self.model.predict(MODEL_TYPE, None, self._features(job))

    def observe(self, job: Job) -> None:
        self.model.observe(MODEL_TYPE, None, job.duration, self._features(job))
        if self.history is not None:
            self.history.observe(job.group, job.duration)


class NaivePredictor:
    """Running median of finished durations per octave of input tokens."""

    def __init__(self) -> None:
        self.buckets: dict[int, list[float]] = {}
        self.all: list[float] = []

    @staticmethod
    def _bucket(job: Job) -> int:
        return int(math.log2(1 + (job.input_tokens or 0)))

    def predict(self, job: Job) -> Prediction | None:
        data = self.buckets.get(self._bucket(job)) or self.all
        if not data:
            return None
        return Prediction((0.5,), (data[len(data) // 2],), method="learned")

    def observe(self, job: Job) -> None:
        bisect.insort(self.buckets.setdefault(self._bucket(job), []), job.duration)
        bisect.insort(self.all, job.duration)


class OraclePredictor:
    """The true duration: only for the oracle bound, never for a Kiln policy."""

    def predict(self, job: Job) -> Prediction:
        return Prediction((0.5,), (job.duration,), method="external")

    def observe(self, job: Job) -> None:
        pass


class ExactFollowUps(KilnPredictor):
    """A bound, not a predictor: the true duration for a job whose session already has a
    finished request, Kiln's prediction otherwise. What perfect use of session history could
    give at most."""

    def predict(self, job: Job) -> Prediction | None:
        if self.history is not None and self.history.feature(job.group) is not None:
            return Prediction((0.5,), (job.duration,), method="external")
        return super().predict(job)


class Recorded:
    """Passes through to ``inner`` and keeps (predicted expected time, true duration) pairs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.pairs: list[tuple[float, float]] = []

    def predict(self, job: Job) -> Prediction | None:
        prediction = self.inner.predict(job)
        if prediction is not None:
            self.pairs.append((estimate(prediction).expected, job.duration))
        return prediction

    def observe(self, job: Job) -> None:
        self.inner.observe(job)


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Rank correlation of the pairs (ties get their average rank); None below 3 pairs."""
    if len(pairs) < 3:
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

    xs, ys = ranks([p for p, _ in pairs]), ranks([a for _, a in pairs])
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:  # constant predictions
        return None


class NoPredictor:
    def predict(self, job: Job) -> None:
        return None

    def observe(self, job: Job) -> None:
        pass


# -- simulation -----------------------------------------------------------------------------


def simulate(
    jobs: list[Job],
    scheduler: Scheduler,
    predictor,
    instances: int,
    placement: str | None = None,
) -> list[float]:
    """Completion times (finish − arrival) of every job, in virtual seconds.

    Events at the same instant are all applied (finishes first, so the predictor learns from
    them) before any dispatch decision.
    """
    ids = [f"i{k}" for k in range(instances)]
    loads = {iid: InstanceLoad(iid) for iid in ids}
    idle = set(ids)
    queues: dict[str | None, list[QueuedItem]] = (
        {iid: [] for iid in ids} if placement else {None: []}
    )
    by_id: dict[str, Job] = {}
    running: list[tuple[float, int, str, QueuedItem]] = []  # (finish, seq, instance, item)
    completion = [0.0] * len(jobs)
    turn = 0
    seq = 0
    next_arrival = 0
    n = len(jobs)
    while next_arrival < n or running:
        arrival_t = jobs[next_arrival].arrival if next_arrival < n else math.inf
        now = min(arrival_t, running[0][0] if running else math.inf)
        while running and running[0][0] <= now:
            _, _, iid, item = heapq.heappop(running)
            job = by_id.pop(item.id)
            completion[job.index] = now - job.arrival
            scheduler.record_finish(item, job.duration, now)
            predictor.observe(job)
            loads[iid] = finish_work(loads[iid], _task_estimate(item), job.duration)
            idle.add(iid)
        while next_arrival < n and jobs[next_arrival].arrival <= now:
            job = jobs[next_arrival]
            next_arrival += 1
            item = QueuedItem(
                id=str(job.index),
                group=job.group,
                priority=0,
                enqueued_at=job.arrival,
                predicted=predictor.predict(job),
            )
            by_id[item.id] = job
            if placement:
                target = place(_task_estimate(item), list(loads.values()), placement, turn=turn)
                turn += 1
                loads[target] = add_work(loads[target], _task_estimate(item))
                queues[target].append(item)
            else:
                queues[None].append(item)
        for iid in sorted(idle):
            queue = queues[iid] if placement else queues[None]
            if not queue:
                continue
            item = scheduler.next(queue, now)
            queue.remove(item)
            if not placement:
                loads[iid] = add_work(loads[iid], _task_estimate(item))
            idle.discard(iid)
            scheduler.record_start(item, now)
            seq += 1
            heapq.heappush(running, (now + by_id[item.id].duration, seq, iid, item))
    return completion


def _task_estimate(item: QueuedItem) -> Estimate:
    return estimate(item.predicted) if item.predicted else Estimate(0.0, 0.0)


# -- reporting ------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    mean: float
    p50: float
    p99: float
    seconds: float
    rho: float | None = None


def summarise(
    label: str, completion: list[float], seconds: float, rho: float | None = None
) -> Result:
    ordered = sorted(completion)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return Result(label, statistics.fmean(ordered), q[49], q[98], seconds, rho)


def policy_runs(
    spec: TraceSpec, use_history: bool, args: argparse.Namespace
) -> list[tuple[str, str, dict, Callable]]:
    feature_names = spec.feature_cols + (["input_tokens"] if spec.input_col else [])

    def kiln():
        return KilnPredictor(feature_names, use_history)

    spf = {
        "aging": args.aging,
        "spread_penalty": args.spread_penalty,
        "starvation_limit": args.starvation_limit,
        "backlog_factor": args.backlog_factor,
        "backlog_aging": args.backlog_aging,
    }
    pure = {"aging": 0.0, "backlog_factor": None}
    return [
        ("FIFO", "FIFO", {}, NoPredictor),
        ("RoundRobin", "RoundRobin", {}, NoPredictor),
        ("Priority", "Priority", {}, NoPredictor),
        ("Fair", "Fair", {}, kiln),
        ("ShortestPredicted", "ShortestPredicted", spf, kiln),
        ("naive SPF", "ShortestPredicted", pure, NaivePredictor),
        ("oracle SJF", "ShortestPredicted", pure, OraclePredictor),
    ] + (
        [
            (
                "exact follow-ups",
                "ShortestPredicted",
                pure,
                lambda: ExactFollowUps(feature_names, True),
            )
        ]
        if args.bounds and use_history
        else []
    )


def run_trace(spec: TraceSpec, args: argparse.Namespace) -> dict[str, Result]:
    jobs = load_jobs(spec, args.limit)
    factor = rescale_to_load(jobs, args.instances, args.load)
    mean_service = statistics.fmean(j.duration for j in jobs)
    groups = len({j.group for j in jobs if j.group is not None})
    print(
        f"\n== {spec.name}: {len(jobs)} jobs, {args.instances} instance(s), load {args.load:g}, "
        f"mean service {mean_service:.2f} s, arrivals stretched ×{factor:.1f}"
        + (f", {groups} sessions" if groups else "")
    )
    results: dict[str, Result] = {}
    for label, policy, params, make_predictor in policy_runs(spec, bool(spec.session_col), args):
        started = time.perf_counter()
        scheduler = Scheduler(policy, params={policy: params})
        predictor = Recorded(make_predictor())
        completion = simulate(jobs, scheduler, predictor, args.instances, args.placement)
        results[label] = summarise(
            label, completion, time.perf_counter() - started, spearman(predictor.pairs)
        )
    print_table(results)
    print_verdict(spec.name, results)
    return results


def print_table(results: dict[str, Result]) -> None:
    fifo, oracle = results["FIFO"], results["oracle SJF"]
    header = (
        f"{'policy':<18} {'mean s':>8} {'p50 s':>8} {'p99 s':>8} {'mean/FIFO':>10} "
        f"{'p99/FIFO':>9} {'mean/orcl':>10} {'p99/orcl':>9} {'rho':>6} {'run s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r.label:<18} {r.mean:8.1f} {r.p50:8.1f} {r.p99:8.1f} {r.mean / fifo.mean:10.3f} "
            f"{r.p99 / fifo.p99:9.3f} {r.mean / oracle.mean:10.3f} {r.p99 / oracle.p99:9.3f} "
            f"{'-' if r.rho is None else format(r.rho, '.3f'):>6} {r.seconds:6.1f}"
        )


def print_verdict(name: str, results: dict[str, Result]) -> None:
    fifo, spf, naive = results["FIFO"], results["ShortestPredicted"], results["naive SPF"]
    cut = 1 - spf.mean / fifo.mean
    p99x = spf.p99 / fifo.p99
    beats = spf.mean < naive.mean and spf.p99 < naive.p99
    ok = cut >= 0.30 and p99x <= 1.2 and beats
    print(
        f"verdict {name}: ShortestPredicted cuts mean {cut:.1%} vs FIFO (target >= 30%), "
        f"p99 {p99x:.2f}x FIFO (target <= 1.2x), vs naive SPF mean "
        f"{spf.mean / naive.mean:.2f}x p99 {spf.p99 / naive.p99:.2f}x -> "
        f"{'MEETS TARGET' if ok else 'MISSES TARGET'}"
    )


# -- command line ---------------------------------------------------------------------------


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() == "none" else float(raw)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--traces-dir",
        type=Path,
        default=REPO / ".." / "shared" / "traces",
        help="folder with the shared traces (default ../shared/traces from the repo root)",
    )
    parser.add_argument(
        "--trace",
        action="append",
        choices=sorted(DEFAULT_TRACES),
        help="run only these shared traces (repeatable)",
    )
    parser.add_argument("--csv", type=Path, help="any other CSV trace")
    parser.add_argument("--arrival-col")
    parser.add_argument("--arrival-unit", default="seconds", choices=["timestamp", "seconds", "ms"])
    parser.add_argument("--duration-col", help="true duration in seconds")
    parser.add_argument("--input-col")
    parser.add_argument("--output-col")
    parser.add_argument(
        "--hardware",
        default="h100_tp8",
        choices=sorted(HARDWARE_COEF),
        help="row of the README's coefficient table",
    )
    parser.add_argument("--coef", help="a,b,c in ms: duration = a + b·input + c·output")
    parser.add_argument(
        "--feature-cols", default="", help="numeric columns the predictor may see, comma-separated"
    )
    parser.add_argument(
        "--session-col", help="space-separated prefix-block hashes; derives conversation sessions"
    )
    parser.add_argument("--group-col", help="column naming each job's group (workflow, tenant)")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--load", type=float, default=0.85)
    parser.add_argument(
        "--placement",
        choices=["min_expected_completion", "weighted", "round_robin", "least_loaded"],
        help="bind jobs to an instance's queue on arrival with this strategy "
        "(default: one shared queue, late binding)",
    )
    parser.add_argument(
        "--aging",
        type=float,
        default=SPF_DEFAULTS.aging,
        help="ShortestPredicted: seconds of predicted size forgiven per second waited",
    )
    parser.add_argument(
        "--backlog-factor",
        type=_optional_float,
        default=SPF_DEFAULTS.backlog_factor,
        help="ShortestPredicted: the backlog guard starts once an item has waited this many "
        "times the predicted work queued ('none' turns it off)",
    )
    parser.add_argument(
        "--backlog-aging",
        type=float,
        default=SPF_DEFAULTS.backlog_aging,
        help="ShortestPredicted: extra seconds of size forgiven per second waited past the guard",
    )
    parser.add_argument(
        "--spread-penalty",
        type=float,
        default=SPF_DEFAULTS.spread_penalty,
        help="ShortestPredicted: spreads added to the expected time",
    )
    parser.add_argument(
        "--starvation-limit",
        type=float,
        help="ShortestPredicted: seconds after which a job runs oldest-first",
    )
    parser.add_argument("--limit", type=int, help="use only the first N rows of each trace")
    parser.add_argument(
        "--bounds",
        action="store_true",
        help="also run 'exact follow-ups' (true durations for jobs whose session has a finished "
        "request, pure SPF): what perfect use of session history could give at most",
    )
    args = parser.parse_args(argv)
    if args.instances < 1 or not 0 < args.load < 1.5:
        parser.error("--instances must be >= 1 and --load in (0, 1.5)")
    return args


def specs_from_args(args: argparse.Namespace) -> list[TraceSpec]:
    coef = HARDWARE_COEF[args.hardware]
    if args.coef:
        coef = tuple(float(x) for x in args.coef.split(","))
        if len(coef) != 3:
            raise SystemExit("--coef takes three numbers: a,b,c")
    if args.csv:
        if not args.arrival_col:
            raise SystemExit("--csv needs --arrival-col")
        if not args.duration_col and not (args.input_col and args.output_col):
            raise SystemExit("--csv needs --duration-col or --input-col and --output-col")
        return [
            TraceSpec(
                name=args.csv.name,
                path=args.csv,
                arrival_col=args.arrival_col,
                arrival_unit=args.arrival_unit,
                duration_col=args.duration_col,
                input_col=args.input_col,
                output_col=args.output_col,
                coef=coef,
                feature_cols=[c for c in args.feature_cols.split(",") if c],
                session_col=args.session_col,
                group_col=args.group_col,
            )
        ]
    specs = []
    for name, cfg in DEFAULT_TRACES.items():
        if args.trace and name not in args.trace:
            continue
        cfg = dict(cfg)
        specs.append(TraceSpec(name=name, path=args.traces_dir / cfg.pop("file"), coef=coef, **cfg))
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    for spec in specs_from_args(args):
        run_trace(spec, args)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
