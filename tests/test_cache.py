"""The on-disk kernel cache across processes: reuse without compiling, corrupt entries
rebuilt, concurrent compiles of one formula."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, torch
import tvmred
from tvmred.torch import Genred
torch.manual_seed(0)
x, y, b = torch.rand(100, 3, dtype=torch.float64), torch.rand(120, 3, dtype=torch.float64), torch.rand(120, 2, dtype=torch.float64)
c = Genred("Exp(-SqDist(x,y)*IntCst(SEED))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)(x, y, b)
ref = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * SEED) @ b
err = ((c - ref).abs().max() / ref.abs().max()).item()
print(json.dumps({"err": err, "tvm_imported": "tvm" in sys.modules, **tvmred.cache.stats}))
"""


def run(cache_dir, seed=3, n=1):
    env = {
        **os.environ,
        "TVMRED_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    code = SCRIPT.replace("SEED", str(seed))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_second_process_reuses_the_disk_cache(tmp_path):
    (first,) = run(tmp_path)
    assert first["compiled"] == 1 and first["err"] < 1e-13
    assert len(list(tmp_path.glob("*.so"))) == 1
    manifest = json.loads(
        next(p for p in tmp_path.glob("*.json") if p.name != "host.json").read_text()
    )
    assert "Exp" in manifest["formula"] and manifest["sha256"]
    (second,) = run(tmp_path)
    assert second["compiled"] == 0 and second["disk_hits"] == 1 and second["err"] < 1e-13
    # a process whose kernels are all cached never imports the TVM compiler (tvmred.runtime)
    assert first["tvm_imported"] and not second["tvm_imported"]


LIGHT_THEN_COMPILE = r"""
import json, sys, torch
from tvmred.torch import Genred
al = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]
x, y, b = torch.rand(50, 3, dtype=torch.float64), torch.rand(60, 3, dtype=torch.float64), torch.rand(60, 2, dtype=torch.float64)
c1 = Genred("Exp(-SqDist(x,y)*IntCst(SEED))*b", al, axis=1)(x, y, b)  # cached: no TVM import
light = "tvm" not in sys.modules
c2 = Genred("Sin((x|y))*b", al, axis=1)(x, y, b)  # new: imports TVM and compiles
c3 = Genred("Exp(-SqDist(x,y)*IntCst(SEED))*b", al, axis=1)(x, y, b)
r1 = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * SEED) @ b
r2 = torch.sin(x @ y.T) @ b
print(json.dumps({"light": light, "err": max(((c1 - r1).abs().max() / r1.abs().max()).item(),
                  ((c2 - r2).abs().max() / r2.abs().max()).item(), (c3 - r1).abs().max().item())}))
"""


def test_cached_kernel_without_tvm_then_a_compile_in_the_same_process(tmp_path):
    run(tmp_path, seed=5)
    env = {
        **os.environ,
        "TVMRED_CACHE_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", LIGHT_THEN_COMPILE.replace("SEED", "5")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["light"] and out["err"] < 1e-13


@pytest.mark.parametrize("damage", ["truncate", "garbage", "manifest"])
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path, damage):
    run(tmp_path)
    so = next(tmp_path.glob("*.so"))
    if damage == "truncate":
        so.write_bytes(so.read_bytes()[: so.stat().st_size // 2])
    elif damage == "garbage":
        so.write_bytes(b"\x7fELF" + os.urandom(4000))
    else:
        so.with_suffix(".json").write_text("{not json")
    (again,) = run(tmp_path)
    assert again["rebuilt_corrupt"] == 1 and again["compiled"] == 1 and again["err"] < 1e-13
    (third,) = run(tmp_path)  # the rebuilt entry is good
    assert third["compiled"] == 0 and third["err"] < 1e-13


def test_concurrent_processes_compile_once(tmp_path):
    outs = run(tmp_path, seed=5, n=3)
    assert all(o["err"] < 1e-13 for o in outs)
    assert sum(o["compiled"] for o in outs) == 1
    assert sum(o["disk_hits"] for o in outs) == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_clear_cache(tmp_path, monkeypatch):
    import torch

    import tvmred
    from tvmred.torch import Genred

    monkeypatch.setenv("TVMRED_CACHE_DIR", str(tmp_path))
    g = Genred("Exp(x)*IntCst(7)", ["x = Vi(2)", "y = Vj(1)"], axis=1)
    x, y = torch.rand(5, 2), torch.rand(3, 1)
    torch.testing.assert_close(g(x, y), 21 * torch.exp(x))
    assert list(tmp_path.glob("*.so"))
    before = tvmred.cache.stats["compiled"]
    tvmred.clear_cache()
    assert not list(tmp_path.glob("*.so"))
    torch.testing.assert_close(g(x, y), 21 * torch.exp(x))
    assert tvmred.cache.stats["compiled"] == before + 1
