"""The checks a reviewer would run first: ruff's lint and format rules over the repository
(every Python package, and the README's Python examples), and mypy over ``engine/`` (the
domain, configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


def test_the_code_passes_ruff_lint_and_is_ruff_formatted():
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_the_engine_type_checks_with_mypy():
    checked = run("mypy", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found" in checked.stdout
