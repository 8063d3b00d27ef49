"""One formatter configuration for the whole tree (``[tool.ruff]`` in pyproject.toml): the
code is as ``ruff format`` writes it, and ``ruff check`` finds nothing."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["tvmred", "schedules", "tests", "benchmarks", "tutorials"]


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')"
)
@pytest.mark.parametrize("command", [["format", "--check"], ["check"]])
def test_ruff(command):
    r = subprocess.run(["ruff", *command, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
