from pathlib import Path

from tvmred.docs import tables

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_are_generated_from_the_registries():
    assert tables() in (ROOT / "README.md").read_text(), "run: python -m tvmred.docs > tables"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest'
    assert command in readme and command in ci
