"""Plain data the scheduling policies work on: queued items and the persistent state."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from kiln.core.prediction.types import Prediction


class UnknownPolicy(ValueError):
    """Unknown scheduling policy; expected one of FIFO, RoundRobin, Priority, Fair,
    ShortestPredicted, ShortestExpected, Boost, SEPTGuard, LateBudget."""

    def __init__(self, name: object, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown scheduling policy {name!r}; expected one of {', '.join(known)}")


@dataclass(frozen=True)
class QueuedItem:
    """A unit of work ready to run.

    ``group`` is what round-robin and fair share rotate between (a workflow or pipeline);
    ``tenant``, when set, is the fair-share key instead. ``priority``: higher runs first.
    ``enqueued_at`` is in seconds on the caller's clock (the same clock as ``now``).
    ``weight`` scales the item's fair share (on top of the weight its priority gives).
    """

    id: str
    group: str | None
    priority: int
    enqueued_at: float
    predicted: Prediction | None = None
    weight: float = 1.0
    tenant: str | None = None

    @property
    def fair_key(self) -> str:
        if self.tenant is not None:
            return self.tenant
        return self.group if self.group is not None else ""


@dataclass
class SchedulerState:
    """What a policy remembers between decisions; plain data, so the service can persist it.

    ``vruntimes`` (fair share, seconds / weight) and ``min_vruntime`` belong to ``Fair``;
    ``rr_group`` / ``rr_used_micros`` to ``RoundRobin``. The counters are kept for every policy:
    a *context switch* is starting work of a different group than the last start, a
    *preemption* is a group losing its round-robin turn because its quantum ran out.
    """

    quantum_micros: int = 10_000
    vruntimes: dict[str, float] = field(default_factory=dict)
    min_vruntime: float = 0.0
    inflight_charge: dict[str, float] = field(default_factory=dict)
    rr_group: str | None = None
    rr_used_micros: int = 0
    last_group: str | None = None
    total_scheduled: int = 0
    context_switches: int = 0
    preemptions: int = 0
    # Measured for self-tuning policies (kiln.core.scheduling.tuning): recent start times and
    # run times, items running now (id -> start), concurrency at recent starts, and the
    # decay rate γ computed from them (``boost_epoch`` counts its changes).
    recent_starts: list[float] = field(default_factory=list)
    recent_sizes: list[float] = field(default_factory=list)
    running_since: dict[str, float] = field(default_factory=dict)
    running_expected: dict[str, float] = field(default_factory=dict)
    fifo_responses: list[float] = field(default_factory=list)
    fifo_waits: dict[str, float] = field(default_factory=dict)
    # [id, arrived, expected run time], arrival order
    fifo_arrivals: list[list] = field(default_factory=list)
    fifo_sizes: dict[str, float] = field(default_factory=dict)  # finished, not replayed yet
    fifo_workload: list[float] = field(default_factory=list)
    fifo_clock: float = 0.0
    recent_pairs: list[tuple[float, float]] = field(default_factory=list)
    fifo_p99: float | None = None
    concurrency: list[int] = field(default_factory=list)
    # LateBudget: items left late on purpose (id -> total_scheduled then), and when.
    excused: dict[str, int] = field(default_factory=dict)
    excused_at: list[int] = field(default_factory=list)
    boost_gamma: float | None = None
    boost_epoch: int = 0
    starts_since_tune: int = 0

    def forget_running(self) -> None:
        """Drop what only reported finishes retire: the items running and FIFO's replay
        queue. For a live policy that reads no finishes, where both would only grow."""
        self.running_since.clear()
        self.running_expected.clear()
        self.fifo_waits.clear()
        self.fifo_arrivals.clear()
        self.fifo_sizes.clear()

    def to_dict(self) -> dict:
        return {
            "quantum_micros": self.quantum_micros,
            "vruntimes": dict(self.vruntimes),
            "min_vruntime": self.min_vruntime,
            "inflight_charge": dict(self.inflight_charge),
            "rr_group": self.rr_group,
            "rr_used_micros": self.rr_used_micros,
            "last_group": self.last_group,
            "total_scheduled": self.total_scheduled,
            "context_switches": self.context_switches,
            "preemptions": self.preemptions,
            "recent_starts": list(self.recent_starts),
            "recent_sizes": list(self.recent_sizes),
            "running_since": dict(self.running_since),
            "running_expected": dict(self.running_expected),
            "fifo_responses": list(self.fifo_responses),
            "fifo_waits": dict(self.fifo_waits),
            "fifo_arrivals": [list(a) for a in self.fifo_arrivals],
            "fifo_sizes": dict(self.fifo_sizes),
            "fifo_workload": list(self.fifo_workload),
            "fifo_clock": self.fifo_clock,
            "recent_pairs": [list(p) for p in self.recent_pairs],
            "fifo_p99": self.fifo_p99,
            "concurrency": list(self.concurrency),
            "excused": dict(self.excused),
            "excused_at": list(self.excused_at),
            "boost_gamma": self.boost_gamma,
            "boost_epoch": self.boost_epoch,
            "starts_since_tune": self.starts_since_tune,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SchedulerState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
