"""The command line: options reach the benchmark script; unknown options are errors."""

import json
import os

import pytest

from tvmred.__main__ import main


def test_bench_forwards_its_options(tmp_path):
    out = tmp_path / "b.json"
    assert (
        main(["bench", "--quick", "--only", "no-such-case", "--libs", "torch", "--out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["rows"] == [] and res["machine"]["cores"] == os.cpu_count()


def test_unknown_option_of_another_command_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["cache", "list", "--quick"])
    assert "unrecognized arguments: --quick" in capsys.readouterr().err
