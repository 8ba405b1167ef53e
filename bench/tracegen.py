"""A seeded family of synthetic job traces, to test whether a scheduler generalises.

Each job belongs to one of ``CLASSES`` categories (column ``cls``, what a client would send:
an adapter, a prompt template, a tenant). Its size is ``scale · m_cls · X``: ``m_cls`` the class
multiplier (log-normal across classes, normalised so the mean size is ``scale``), ``X`` a
within-class draw of mean 1 from the chosen family, independent of the class:

- ``exp`` (exponential), ``lognormal:σ`` (σ of the log), ``pareto:α`` (shape α > 1).

So ``E[size | cls] = scale · m_cls`` exactly: the *label oracle*'s ranking (column
``expected_s``). ``quality`` sets how much the class says about the size, as the Spearman rank
correlation between ``expected_s`` and the size (the class spread is solved for it on a
calibration sample): 0.2 is almost uninformative. ``quality = 1`` ("perfect") instead gives the
predictor the size itself (numeric column ``size_hint``), and ``expected_s`` is the size.

Arrivals are Poisson at the rate that makes the offered load ``load`` on ``instances``
instances, or, ``bursty``, a two-phase modulated Poisson process (phases of 1.75× and 0.25×
that rate, each lasting an exponential time of mean 50 mean sizes per instance), the same load
on average.

    python bench/tracegen.py --family pareto:1.5 --quality 0.5 --load 0.9 --out t.csv
    python bench/scheduling.py --csv t.csv --arrival-col arrival_s --duration-col duration_s \\
        --feature-cols cls --label-col expected_s
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedsim import Job, spearman  # noqa: E402

CLASSES = 32
FAMILIES = ("exp", "lognormal:1", "lognormal:2.5", "pareto:1.5", "pareto:3")


@dataclass(frozen=True)
class TraceShape:
    family: str = "lognormal:1"
    scale: float = 1.0  # mean size, seconds
    load: float = 0.8
    quality: float = 0.5  # rank correlation of E[size | features] with size; 1: perfect
    instances: int = 1
    bursty: bool = False
    jobs: int = 4000
    seed: int = 17

    @property
    def seed_key(self) -> str:
        # Not the scale: traces that differ only in scale are exact rescaled copies.
        return (
            f"{self.seed}:{self.family}:{self.quality:g}:{self.load:g}:{self.instances}:"
            f"{self.bursty}:{self.jobs}"
        )

    @property
    def name(self) -> str:
        return (
            f"{self.family} q{self.quality:g} load{self.load:g} k{self.instances} "
            f"scale{self.scale:g}{' bursty' if self.bursty else ''}"
        )


def _within(family: str, rng: random.Random) -> float:
    """One draw of mean 1 from the family."""
    kind, _, raw = family.partition(":")
    if kind == "exp":
        return rng.expovariate(1.0)
    if kind == "lognormal":
        sigma = float(raw)
        return math.exp(rng.gauss(-sigma * sigma / 2, sigma))
    if kind == "pareto":
        alpha = float(raw)
        if alpha <= 1:
            raise ValueError("a Pareto shape must be > 1 for a finite mean")
        return (alpha - 1) / alpha * rng.paretovariate(alpha)
    raise ValueError(f"unknown family {family!r}; expected exp, lognormal:σ or pareto:α")


def _multipliers(spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [math.exp(spread * rng.gauss(0, 1)) for _ in range(CLASSES)]
    mean = sum(raw) / len(raw)
    return [m / mean for m in raw]


def _rank_corr(family: str, spread: float, seed: int, n: int = 4000) -> float:
    rng = random.Random(seed + 1)
    mult = _multipliers(spread, seed)
    pairs = [(m, m * _within(family, rng)) for m in (rng.choice(mult) for _ in range(n))]
    return spearman([p[0] for p in pairs], [p[1] for p in pairs]) or 0.0


@cache
def class_spread(family: str, quality: float, seed: int) -> float:
    """The log-spread of the class multipliers that gives rank correlation ``quality``."""
    lo, hi = 0.0, 12.0
    for _ in range(22):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _rank_corr(family, mid, seed) < quality else (lo, mid)
    return (lo + hi) / 2


def _arrivals(shape: TraceShape, rng: random.Random) -> list[float]:
    rate = shape.load * shape.instances / shape.scale
    if not shape.bursty:
        t, out = 0.0, []
        for _ in range(shape.jobs):
            t += rng.expovariate(rate)
            out.append(t)
        return out
    phase_mean = 50 * shape.scale / shape.instances
    t, out, high = 0.0, [], True
    phase_end = rng.expovariate(1 / phase_mean)
    while len(out) < shape.jobs:
        step = rng.expovariate(rate * (1.75 if high else 0.25))
        if t + step > phase_end:  # memoryless: restart the draw in the next phase
            t, high = phase_end, not high
            phase_end = t + rng.expovariate(1 / phase_mean)
            continue
        t += step
        out.append(t)
    return out


def generate(shape: TraceShape) -> list[Job]:
    """The trace's jobs, sorted by arrival; the same shape always gives the same jobs."""
    rng = random.Random(shape.seed_key)
    perfect = shape.quality >= 1
    spread = 0.0 if perfect else class_spread(shape.family, shape.quality, shape.seed)
    mult = _multipliers(spread, shape.seed)
    jobs = []
    for index, arrival in enumerate(_arrivals(shape, rng)):
        cls = rng.randrange(CLASSES)
        size = shape.scale * mult[cls] * _within(shape.family, rng)
        features: dict[str, float | str] = {"cls": f"c{cls:02d}"}
        if perfect:
            features = {"size_hint": size}
        jobs.append(
            Job(
                index=index,
                arrival=arrival,
                duration=size,
                features=features,
                label_mean=size if perfect else shape.scale * mult[cls],
            )
        )
    return jobs


def write_csv(jobs: list[Job], path: Path) -> None:
    names = sorted({k for j in jobs for k in j.features})
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["arrival_s", "duration_s", "expected_s", *names])
        for j in jobs:
            out.writerow(
                [f"{j.arrival:.6f}", f"{j.duration:.6g}", f"{j.label_mean:.6g}"]
                + [j.features.get(n, "") for n in names]
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="lognormal:1")
    parser.add_argument("--scale", type=float, default=1.0, help="mean size in seconds")
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--quality", type=float, default=0.5, help="rank correlation, or 1")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--bursty", action="store_true")
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (0 < args.load < 1.5 and 0 < args.quality <= 1 and args.scale > 0):
        parser.error("--load in (0, 1.5), --quality in (0, 1], --scale > 0")
    try:
        jobs = generate(
            TraceShape(args.family, args.scale, args.load, args.quality, args.instances,
                       args.bursty, args.jobs, args.seed)
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    write_csv(jobs, args.out)
    print(f"{args.out}: {len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
