"""Issue 17's generalisation grid: the chosen policy on a seeded family of generated traces.

Every cell is a trace from ``bench/tracegen.py`` replayed by the simulator of
``bench/scheduling.py`` with FIFO, the chosen policy (``--policy``, default LateBudget), the label
oracle (shortest-expected-first by the true conditional mean) and the full oracle. Per cell:
how much the label oracle cuts FIFO's mean (``LO cut``), the policy's ``capture`` =
(FIFO mean − policy mean) / (FIFO mean − label-oracle mean), its p99 and mean against FIFO,
the oracle's mean against FIFO, and the predictor's p90 coverage (all jobs, first 10 %).

A cell *counts* when the label oracle cuts the mean by at least 10 %; it passes when the
policy captures at least 60 % there, keeps p99 within 1.2× FIFO and never has a worse mean
than FIFO (the last two are checked on every cell).

    python bench/scheduling_grid.py                 # the default grid, a few minutes
    python bench/scheduling_grid.py --jobs 8000 --policy ShortestExpected --out /tmp/g
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedsim import (  # noqa: E402
    KilnPredictor,
    LabelOracle,
    NoPredictor,
    OraclePredictor,
    Result,
    capture,
    simulate,
    summarise,
)
from tracegen import FAMILIES, TraceShape, generate  # noqa: E402

from kiln.core.scheduling import POLICY_NAMES, Scheduler  # noqa: E402

QUALITIES = (1.0, 0.8, 0.5, 0.2)
LOADS = (0.5, 0.8, 0.95)
RESULTS = Path(__file__).resolve().parent / "results"


def default_grid(jobs: int, seed: int) -> list[TraceShape]:
    """Every family × predictor quality × load on one instance at a 1 s mean, then the other
    dimensions varied around two contrasting cells: scale (0.1 s, 1000 s), instances (2, 8),
    bursty arrivals."""
    base = TraceShape(jobs=jobs, seed=seed)
    cells = [
        replace(base, family=f, quality=q, load=rho)
        for f, q, rho in itertools.product(FAMILIES, QUALITIES, LOADS)
    ]
    anchors = [
        replace(base, family="lognormal:1", quality=0.5, load=0.8),
        replace(base, family="pareto:1.5", quality=0.8, load=0.95),
    ]
    for anchor in anchors:
        cells += [replace(anchor, scale=s) for s in (0.1, 1000.0)]
        cells += [replace(anchor, instances=k) for k in (2, 8)]
        cells.append(replace(anchor, bursty=True))
    return cells


@dataclass
class Cell:
    trace: str
    family: str
    quality: float
    load: float
    instances: int
    scale: float
    bursty: bool
    lo_cut: float
    capture: float | None
    p99_x: float
    mean_x: float
    oracle_mean_x: float
    p90_cover: float | None
    p90_cover_early: float | None
    counts: bool
    passes: bool


def run_cell(shape: TraceShape, policy: str, params: dict) -> Cell:
    jobs = generate(shape)
    names = ["size_hint"] if shape.quality >= 1 else ["cls"]
    runs = {
        "FIFO": ("FIFO", {}, NoPredictor()),
        policy: (policy, params, KilnPredictor(names, False)),
        "label oracle": ("ShortestExpected", {}, LabelOracle(jobs, names)),
        "oracle SJF": ("ShortestExpected", {}, OraclePredictor()),
    }
    res: dict[str, Result] = {}
    for label, (name, kwargs, predictor) in runs.items():
        started = time.perf_counter()
        outcome = simulate(jobs, Scheduler(name, params={name: kwargs}), predictor, shape.instances)
        res[label] = summarise(label, outcome, time.perf_counter() - started, len(jobs))
    fifo, chosen, label = res["FIFO"], res[policy], res["label oracle"]
    lo_cut = 1 - label.mean / fifo.mean
    got = capture(chosen, fifo, label)
    p99_x, mean_x = chosen.p99 / fifo.p99, chosen.mean / fifo.mean
    counts = lo_cut >= 0.10
    passes = p99_x <= 1.2 and mean_x <= 1.0 and (not counts or (got is not None and got >= 0.6))
    return Cell(
        shape.name, shape.family, shape.quality, shape.load, shape.instances, shape.scale,
        shape.bursty, lo_cut, got, p99_x, mean_x, res["oracle SJF"].mean / fifo.mean,
        chosen.p90_cover, chosen.p90_cover_early, counts, passes,
    )  # fmt: skip


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row_text(c: Cell) -> str:
    return (
        f"| {c.family} | {'perfect' if c.quality >= 1 else format(c.quality, 'g')} | "
        f"{c.load:g} | {c.instances} | {c.scale:g} | {'yes' if c.bursty else ''} | "
        f"{c.lo_cut:.0%} | {_f(c.capture, '.0%')} | {c.p99_x:.2f} | {c.mean_x:.3f} | "
        f"{c.oracle_mean_x:.3f} | {_f(c.p90_cover, '.0%')} / {_f(c.p90_cover_early, '.0%')} | "
        f"{'pass' if c.passes else '**FAIL**'}{'' if c.counts else ' (LO < 10 %)'} |"
    )


HEADER = (
    "| sizes | predictor rank corr. | load | inst. | mean s | bursty | LO cut | capture | "
    "p99/FIFO | mean/FIFO | oracle/FIFO | p90 cov. (first 10 %) | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def compact_table(cells: list[Cell]) -> str:
    """The one-instance, 1 s, Poisson cells as a heat-map-like table: per sizes × predictor
    quality, one column per load with ``capture / p99÷FIFO`` (✗ where a target is missed;
    ``·`` where the label oracle cuts the mean by less than 10 %: the mean÷FIFO instead)."""
    base = [c for c in cells if c.instances == 1 and c.scale == 1 and not c.bursty]
    loads = sorted({c.load for c in base})
    lines = [
        "| sizes | predictor | " + " | ".join(f"load {x:g}" for x in loads) + " |",
        "|---|---|" + "---|" * len(loads),
    ]
    keys = list(dict.fromkeys((c.family, c.quality) for c in base))
    for family, quality in keys:
        row = []
        for load in loads:
            c = next(c for c in base if (c.family, c.quality, c.load) == (family, quality, load))
            mark = "" if c.passes else " ✗"
            text = f"{_f(c.capture, '.0%')} / {c.p99_x:.2f}{mark}"
            row.append(text if c.counts else f"· ({c.mean_x:.2f}× mean) / {c.p99_x:.2f}{mark}")
        name = "perfect" if quality >= 1 else f"ρ {quality:g}"
        lines.append(f"| {family} | {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def read_cells(path: Path) -> list[Cell]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def value(name: str, raw: str):
        kind = Cell.__dataclass_fields__[name].type
        if raw == "":
            return None
        if "bool" in str(kind):
            return raw == "True"
        if "float" in str(kind) or "int" in str(kind):
            return int(raw) if str(kind) == "int" else float(raw)
        return raw

    return [Cell(**{k: value(k, v) for k, v in row.items()}) for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="LateBudget", choices=POLICY_NAMES)
    parser.add_argument(
        "--param", action="append", default=[], help="policy parameter NAME=VALUE (repeatable)"
    )
    parser.add_argument("--jobs", type=int, default=4000, help="jobs per trace")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--only", help="run only cells whose name contains this text")
    parser.add_argument("--out", type=Path, default=RESULTS / "scheduling_grid")
    parser.add_argument(
        "--render", type=Path, help="only print the compact table of a grid CSV written before"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(compact_table(read_cells(args.render)))
        return 0
    try:
        params = {k: float(v) for k, v in (p.split("=", 1) for p in args.param)}
    except ValueError:
        parser.error("--param takes NAME=NUMBER")
    cells = [s for s in default_grid(args.jobs, args.seed) if not args.only or args.only in s.name]
    started = time.perf_counter()
    title = f"{args.policy} {params or 'defaults'} on {len(cells)} cells of {args.jobs} jobs"
    print(title + "\n")
    print(HEADER)
    done = []
    for shape in cells:
        cell = run_cell(shape, args.policy, params)
        done.append(cell)
        print(row_text(cell), flush=True)
    counted = [c for c in done if c.counts]
    failed = [c for c in done if not c.passes]
    worst = min((c.capture for c in counted if c.capture is not None), default=None)
    summary = (
        f"{len(done)} cells, {len(counted)} where the label oracle cuts the mean >= 10 %; "
        f"{len(done) - len(failed)} pass, {len(failed)} fail; lowest capture where it counts "
        f"{_f(worst, '.0%')}; highest p99/FIFO {max(c.p99_x for c in done):.2f}; highest "
        f"mean/FIFO {max(c.mean_x for c in done):.3f}; p90 coverage "
        f"{min(c.p90_cover or 1 for c in done):.0%}–{max(c.p90_cover or 0 for c in done):.0%}, "
        f"first 10 % {min(c.p90_cover_early or 1 for c in done):.0%}–"
        f"{max(c.p90_cover_early or 0 for c in done):.0%} ({time.perf_counter() - started:.0f} s)"
    )
    print("\n" + summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(done[0])))
        writer.writeheader()
        writer.writerows(asdict(c) for c in done)
    args.out.with_suffix(".md").write_text(
        "\n".join(
            [title, "", compact_table(done), "", HEADER, *map(row_text, done), "", summary, ""]
        )
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
