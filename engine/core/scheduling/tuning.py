"""Self-tuning from the live queue: γ-Boost's boost and decay rate, and FIFO's tail.

Yu and Scully, *Strongly Tail-Optimal Scheduling in the Light-Tailed M/G/1* (SIGMETRICS 2024):
serve jobs in order of *boosted arrival time* ``arrival − b(job)``. With only a label (here: a
predicted size distribution) the boost is

    b = (1/γ) · log( M / (M − 1) ),   M = E[exp(γ·S) | label]

where γ, the decay rate of FCFS's response-time tail, solves ``γ = λ·(E[exp(γ·S)] − 1)``. A
short job gets a large boost (``≈ (1/γ)·log(1/(γ·E[S]))``), a long one almost none, so the policy
behaves like FCFS for jobs of similar size and like shortest-expected-first between jobs of
very different sizes; how strongly depends on γ, i.e. on the measured load and size spread,
never on a constant in seconds.

``K`` instances are modelled as one server ``K`` times as fast (the usual M/G/K → M/G/1
reduction), so sizes are divided by ``K`` wherever γ meets them.

Everything the tuning needs is measured by :func:`note_arrival`, :func:`note_start` and
:func:`note_finish` into :class:`~kiln.core.scheduling.items.SchedulerState`: start times (the
throughput, equal to the arrival rate in a stable queue), finished run times (the size
distribution), the peak number of items running at once (the instances), and, for each
arrival, the wait FIFO would give it, predicted when it arrives (the predicted work ahead of
it, queued plus what is left of the running items, over the instances), and exactly once
the run times are known: FIFO is replayed on the arrival times and actual run times
(:func:`_replay_fifo`), so its response times are measured while another policy runs, bursts
and heavy tails included; :func:`fifo_p99` is their p99, together with estimated responses of
the arrivals the exact replay has not reached yet (:func:`_pending_responses`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from kiln.core.prediction.estimate import quantile_value
from kiln.core.prediction.types import Prediction
from kiln.core.scheduling.items import SchedulerState

WINDOW = 256  # starts, run times and concurrency samples kept for tuning
FIFO_WINDOW = 2048  # FIFO response times kept (p99 needs a few dozen above it)
RETUNE_EVERY = 32  # starts between recomputations of γ
MIN_SAMPLES = 16  # finished run times needed before γ is computed
# γ·E[S] is kept at or above this: at or past saturation (ρ ≥ 1) FCFS has no exponential
# tail and the root goes to 0; the floor makes the boost shortest-expected-first with an
# aging so slow that a job overtakes only after ~1/floor mean sizes of waiting per e-fold.
MIN_THETA = 1e-3
_POINTS = tuple((i + 0.5) / 10 for i in range(10))  # equal-probability points of a prediction


def size_points(prediction: Prediction) -> tuple[float, ...]:
    """Ten equally likely sizes from a quantile prediction (the quantile function at the
    bin midpoints, clamped to the outermost quantiles given)."""
    return tuple(quantile_value(prediction, q) for q in _POINTS)


def _log_mgf(gamma: float, sizes: Sequence[float]) -> tuple[float, float]:
    """``(log M, log(M − 1))`` for ``M = mean(exp(γ·s))``, without overflow."""
    top = max(gamma * s for s in sizes)
    log_m = top + math.log(sum(math.exp(gamma * s - top) for s in sizes) / len(sizes))
    excess = sum(math.expm1(gamma * s) for s in sizes) / len(sizes) if top < 50 else math.inf
    if math.isinf(excess):
        # M is huge, so M − 1 is M to double precision.
        return log_m, log_m
    return log_m, math.log(excess) if excess > 0 else -math.inf


def boost(gamma: float, sizes: Sequence[float]) -> float:
    """γ-Boost's boost, in seconds, of a job whose size is equally likely any of ``sizes``
    (seconds of the whole system's service, i.e. already divided by the instances)."""
    if not sizes or max(sizes) <= 0:
        return math.inf if sizes else 0.0
    log_m, log_excess = _log_mgf(gamma, sizes)
    if log_excess == log_m:
        return -math.log1p(-math.exp(-log_m)) / gamma
    return (log_m - log_excess) / gamma


def decay_rate(arrival_rate: float, sizes: Sequence[float]) -> float:
    """γ > 0 with ``γ = λ·(mean(exp(γ·s)) − 1)`` for these observed sizes; at or past
    saturation, ``MIN_THETA / mean size``."""
    mean = sum(sizes) / len(sizes)
    if mean <= 0:
        return math.inf
    xs = [s / mean for s in sizes]
    rho = arrival_rate * mean

    def excess(theta: float) -> float:  # ρ·(M(θ) − 1) − θ, in units of the mean size
        top = max(theta * x for x in xs)
        if top > 600:
            return math.inf
        return rho * sum(math.expm1(theta * x) for x in xs) / len(xs) - theta

    if rho >= 1 or excess(MIN_THETA) >= 0:
        return MIN_THETA / mean
    lo, hi = MIN_THETA, 2 * MIN_THETA
    while excess(hi) < 0:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return lo / mean


# -- measuring the queue ------------------------------------------------------------------


def note_arrival(
    state: SchedulerState,
    item_id: str,
    now: float,
    queued_work: float,
    arrived_at: float,
    expected: float | None = None,
) -> None:
    """An item that arrived at ``arrived_at`` is seen at ``now`` behind ``queued_work``
    predicted seconds of waiting items: record the wait FIFO would give it, as predicted now
    (``fifo_waits[item_id]``, until it finishes), and queue it for the exact FIFO replay with
    its ``expected`` run time (the estimate used until the replay reaches it)."""
    # Work left on running items: only those with an expected size have any (the others
    # count 0), so this walks ``running_expected``, not every running item: once per arrival,
    # a walk of thousands of running items made a 1,000-task dispatch pass take a second.
    left = sum(
        max(size - (now - state.running_since[i]), 0.0)
        for i, size in state.running_expected.items()
        if i in state.running_since
    )
    state.fifo_waits[item_id] = (queued_work + left) / servers(state) * work_ratio(state)
    if len(state.fifo_waits) > 64 * WINDOW:
        # Items the caller never started (cancelled): the oldest entries go first.
        for key in list(state.fifo_waits)[: 16 * WINDOW]:
            del state.fifo_waits[key]
    state.fifo_arrivals.append([item_id, arrived_at, expected or 0.0])
    if len(state.fifo_arrivals) > 64 * WINDOW:
        # A job that never finishes (cancelled) must not stall the replay for good.
        del state.fifo_arrivals[: 16 * WINDOW]
        _replay_fifo(state)


def _workload(state: SchedulerState, k: int) -> list[float]:
    """Work left on each of ``k`` instances where the exact FIFO replay stands (idle: 0)."""
    return sorted(state.fifo_workload)[:k] + [0.0] * max(k - len(state.fifo_workload), 0)


def _replay_fifo(state: SchedulerState) -> None:
    """FIFO on ``servers(state)`` instances, replayed in arrival order with the actual run
    times as they become known (the Kiefer–Wolfowitz workload recursion): each job's FIFO
    response goes to ``fifo_responses``. Exact for the arrivals and run times seen, whatever
    order the real policy ran them in."""
    k = servers(state)
    work = _workload(state, k)
    done = 0
    for item_id, arrived, *_ in state.fifo_arrivals:
        size = state.fifo_sizes.pop(item_id, None)
        if size is None:
            break
        elapsed = max(arrived - state.fifo_clock, 0.0)
        work = sorted(max(w - elapsed, 0.0) for w in work)
        state.fifo_responses.append(work[0] + size)
        work[0] += size
        state.fifo_clock = max(state.fifo_clock, arrived)
        done += 1
    del state.fifo_arrivals[:done]
    del state.fifo_responses[:-FIFO_WINDOW]
    state.fifo_workload = work


def _pending_responses(state: SchedulerState, now: float) -> list[float]:
    """FIFO's response times for the arrivals the exact replay has not reached yet.

    The replay stops at the first arrival whose run time is unknown, and under a policy that
    holds long items back that is the one it is holding: without these, FIFO's p99 is frozen
    at its value from before the congestion, exactly while the queue is congested. So the
    replay goes on from where it stopped, on a copy, with the run times known so far, and for
    the rest the mean estimate: a running item's elapsed time or its expected run time,
    whichever is longer, a waiting one's expected run time, both scaled by
    :func:`work_ratio`. Recomputed at every retune, so each estimate is replaced by the
    exact figure once the run times are known. Nothing before the first run time is known
    (nor where none ever is: a live policy that does not learn run times reports no finish).

    The instances as a heap of the times they are free: O(log k) an arrival.
    """
    if not state.recent_sizes:
        return []
    k = servers(state)
    ratio = work_ratio(state)
    work = _workload(state, k)
    clock = state.fifo_clock
    free = [clock + w for w in work]
    heapq.heapify(free)
    out = []
    for item_id, arrived, *rest in state.fifo_arrivals:
        size = state.fifo_sizes.get(item_id)
        if size is None:
            size = (rest[0] if rest else 0.0) * ratio
            if item_id in state.running_since:
                size = max(size, now - state.running_since[item_id])
        clock = max(clock, arrived)
        response = max(heapq.heappop(free) - clock, 0.0) + size
        out.append(response)
        heapq.heappush(free, clock + response)
    return out


def work_ratio(state: SchedulerState) -> float:
    """Actual run time per predicted second, over recent finishes: a prediction's expected
    value is a central one (near the median), and queued work must be counted in means."""
    predicted = sum(p for p, _ in state.recent_pairs)
    actual = sum(a for _, a in state.recent_pairs)
    return actual / predicted if predicted > 0 and actual > 0 else 1.0


def fifo_p99(state: SchedulerState) -> float | None:
    """FIFO's p99 response time over the recent arrivals, or ``None`` before ``MIN_SAMPLES``
    (kept with the γ tuning, so it moves with ``boost_epoch``)."""
    return state.fifo_p99


def _p99(values: list[float]) -> float | None:
    if len(values) < MIN_SAMPLES:
        return None
    ordered = sorted(values)
    return ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)]


def note_start(
    state: SchedulerState, item_id: str, now: float, expected: float | None = None
) -> None:
    """An item started at ``now``: throughput and concurrency samples; γ and FIFO's p99 are
    recomputed every ``RETUNE_EVERY`` starts (``boost_epoch`` moves when either changes by
    more than 5 %)."""
    state.recent_starts.append(now)
    del state.recent_starts[:-WINDOW]
    state.running_since[item_id] = now
    if expected is not None:
        state.running_expected[item_id] = expected
    if len(state.running_since) > 16 * WINDOW:
        # Finishes the caller never reported (cancelled work); the oldest go first.
        for key in sorted(state.running_since, key=state.running_since.__getitem__)[:WINDOW]:
            del state.running_since[key]
            state.running_expected.pop(key, None)
    state.concurrency.append(len(state.running_since))
    del state.concurrency[:-WINDOW]
    state.starts_since_tune += 1
    if state.starts_since_tune >= RETUNE_EVERY or state.boost_gamma is None:
        retune(state, now)


def note_finish(state: SchedulerState, item_id: str, runtime: float) -> None:
    state.running_since.pop(item_id, None)
    expected = state.running_expected.pop(item_id, None)
    state.fifo_waits.pop(item_id, None)
    if runtime >= 0 and math.isfinite(runtime):
        state.fifo_sizes[item_id] = runtime
        if state.fifo_arrivals and state.fifo_arrivals[0][0] == item_id:
            _replay_fifo(state)
        elif len(state.fifo_sizes) > 64 * WINDOW:
            state.fifo_sizes.clear()
    if expected is not None and runtime >= 0 and math.isfinite(runtime):
        state.recent_pairs.append((expected, runtime))
        del state.recent_pairs[:-WINDOW]
    if runtime >= 0 and math.isfinite(runtime):
        state.recent_sizes.append(runtime)
        del state.recent_sizes[:-WINDOW]


def servers(state: SchedulerState) -> int:
    """How many items ran at once at most, lately: the instances when the queue was busy."""
    return max(state.concurrency, default=1) or 1


def arrival_rate(state: SchedulerState) -> float | None:
    starts = state.recent_starts
    if len(starts) < MIN_SAMPLES or starts[-1] <= starts[0]:
        return None
    return (len(starts) - 1) / (starts[-1] - starts[0])


def retune(state: SchedulerState, now: float | None = None) -> None:
    """Recompute γ from the measured arrival rate, run times and instances, and FIFO's p99
    from the recorded FIFO response times, with, when ``now`` is given, the estimated ones of
    the arrivals the exact replay has not reached (:func:`_pending_responses`)."""
    pending = _pending_responses(state, now) if now is not None else []
    p99 = _p99((state.fifo_responses + pending)[-FIFO_WINDOW:])
    if p99 is not None and (
        state.fifo_p99 is None or abs(p99 - state.fifo_p99) > 0.05 * state.fifo_p99
    ):
        state.fifo_p99 = p99
        state.boost_epoch += 1
    rate = arrival_rate(state)
    if rate is None or len(state.recent_sizes) < MIN_SAMPLES:
        return
    state.starts_since_tune = 0
    k = servers(state)
    gamma = decay_rate(rate, [s / k for s in state.recent_sizes])
    old = state.boost_gamma
    if old is None or abs(gamma - old) > 0.05 * old:
        state.boost_gamma = gamma
        state.boost_epoch += 1
