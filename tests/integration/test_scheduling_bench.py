"""``bench/scheduling.py`` replays any CSV it is given: duration or token columns, category
features, groups, model types, real arrival times or a load, a subset of the rows; and says
in one line what is wrong with a bad one."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "scheduling.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "jobs.csv"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tracegen.py"), "--family", "lognormal:1",
         "--quality", "0.8", "--load", "0.9", "--jobs", "1500", "--out", str(path)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "1500 jobs" in done.stdout
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Add what real traces carry: a model type and a tenant per job.
    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=[*rows[0], "model", "tenant"])
        out.writeheader()
        for i, row in enumerate(rows):
            out.writerow({**row, "model": "sdxl" if i % 3 else "flux", "tenant": f"t{i % 7}"})
    return path


def rows_of(stdout: str) -> dict[str, list[str]]:
    return {
        line[:18].strip(): line[18:].split()
        for line in stdout.splitlines()
        if line[:18].strip() and not line.startswith(("policy", "-", "==", "verdict", "total"))
    }


def test_a_duration_csv_with_category_features_replays_at_its_real_arrival_times(trace):
    done = bench(
        "--csv", trace, "--arrival-col", "arrival_s", "--duration-col", "duration_s",
        "--feature-cols", "cls", "--model-col", "model", "--group-col", "tenant",
        "--label-col", "expected_s", "--policies", "FIFO,SEPTGuard,naive SPF,oracle SJF",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 instance(s), real arrival times, offered load 0.8" in done.stdout
    table = rows_of(done.stdout)
    assert set(table) == {"FIFO", "SEPTGuard", "naive SPF", "label oracle", "oracle SJF"}
    mean_vs_fifo = {name: float(cells[3]) for name, cells in table.items()}
    # The naive row buckets by the category: it is not FIFO in disguise.
    assert mean_vs_fifo["naive SPF"] < 0.95
    assert mean_vs_fifo["oracle SJF"] < mean_vs_fifo["label oracle"] < 1.0
    assert "verdict jobs.csv: SEPTGuard captures" in done.stdout


def test_a_load_rescales_the_arrivals_and_instances_share_the_queue(trace):
    done = bench(
        "--csv", trace, "--arrival-col", "arrival_s", "--duration-col", "duration_s",
        "--feature-cols", "cls", "--instances", "2", "--load", "0.7", "--policies", "Boost",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 instance(s), load 0.7" in done.stdout
    assert set(rows_of(done.stdout)) == {"FIFO", "Boost", "label oracle"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arrival-col", "nope", "--duration-col", "duration_s"], "no column 'nope'"),
        (["--arrival-col", "arrival_s", "--duration-col", "cls"], "is not a number"),
        (["--arrival-col", "arrival_s"], "--csv needs --duration-col"),
        (["--arrival-col", "arrival_s", "--duration-col", "duration_s", "--policies", "SJF"],
         "unknown row SJF"),
        (["--arrival-col", "arrival_s", "--duration-col", "duration_s", "--load", "0.5",
          "--real-time"], "exclude each other"),
    ],
)  # fmt: skip
def test_a_bad_trace_or_flag_is_one_readable_line_and_a_non_zero_exit(trace, args, message):
    done = bench("--csv", trace, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
