"""A fresh clone without the data: data tests skip with a how-to, and fail under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test runs pytest in a subprocess

REPO_ROOT = Path(__file__).resolve().parents[2]
# One test that needs the shared split files, one that needs Omniglot itself.
DATA_TESTS = [
    "tests/data/test_data_miniimagenet.py::test_packaged_ravi_csvs_equal_the_shared_ones",
    "tests/data/test_data_omniglot.py::test_all_1623_characters_with_20_images",
]


def _pytest_without_data(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        MAMLPP_SHARED=str(tmp_path / "no-shared-here"),  # explicit: ../shared is not consulted
        MAMLPP_DATA=str(tmp_path / "empty-cache"),  # an empty download cache
    )
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *DATA_TESTS]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_data_tests_skip_with_a_how_to_when_the_data_is_absent(tmp_path):
    result = _pytest_without_data(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 skipped" in result.stdout
    assert "MAMLPP_SHARED" in result.stdout  # the reason says how to provide the data
    assert "mamlpp data download omniglot" in result.stdout


def test_data_tests_fail_under_ci_when_the_data_is_absent(tmp_path):
    result = _pytest_without_data(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 errors" in result.stdout and "CI=true and" in result.stdout
