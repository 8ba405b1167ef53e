"""The checks a reviewer would run first: ruff's lint and format rules over the repository
(every Python package, and the README's Python examples), mypy over the ``kiln`` package
that ``engine/`` holds (configured in pyproject.toml), and import-linter's layer contracts."""

from __future__ import annotations

import os
import shutil
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


def test_the_engine_type_checks_with_mypy(tmp_path: Path):
    # mypy cannot follow setuptools' editable-install finder, which maps ``kiln`` to engine/;
    # a link named ``kiln`` gives it the same view of the source.
    (tmp_path / "kiln").symlink_to(ROOT / "engine", target_is_directory=True)
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--config-file",
            str(ROOT / "pyproject.toml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found" in checked.stdout


def installed_layout(target: Path) -> Path:
    """The ``kiln`` package as ``pip install .`` lays it out (engine/ is ``kiln``, and web/,
    workers/ and migrations/ its subpackages), copied under ``target``. import-linter walks a
    package's folder, so it needs this layout rather than the editable install's mapping."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = config["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__")
    for name in sorted(package_dirs, key=len):  # parents first
        shutil.copytree(
            ROOT / package_dirs[name],
            target / name.replace(".", "/"),
            ignore=ignore,
            dirs_exist_ok=True,
        )
    return target


def test_the_layers_hold_as_import_linter_contracts(tmp_path: Path):
    layout = installed_layout(tmp_path / "site")
    linted = subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--config",
            str(ROOT / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=layout,
        env={**os.environ, "PYTHONPATH": str(layout)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 broken" in linted.stdout
