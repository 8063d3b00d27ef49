"""Start-up is a feature: what a process imports, measured by its structure, not its time.
After ``import tvmred.torch`` and a call whose kernels are in the disk cache (its forward
and its gradient), neither ``torch._dynamo`` nor TVM's packages (``tvm``, ``tvm_ffi``) nor
``ml_dtypes`` are imported; after ``import tvmred.numpy`` and a cached call, not even torch
(benchmarks/bench_startup.py times the same steps beside pykeops)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch._dynamo", "tvm", "tvm_ffi", "ml_dtypes"]

TORCH = """
import json, sys, torch
from tvmred.torch import Genred
after_import = sorted(m for m in HEAVY if m in sys.modules)
x, y = torch.rand(50, 3, dtype=torch.float64), torch.rand(70, 3, dtype=torch.float64)
y.requires_grad_()
b = torch.rand(70, 2, dtype=torch.float64)
g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
c = g(x, y, b)
(gy,) = torch.autograd.grad(c.sum(), y)
import numpy as np  # the reference in numpy: torch's float64 exp(..) @ b was 1e-8 off in
xn, yn, bn = x.numpy(), y.detach().numpy(), b.numpy()  # one process of ten (tvmred's: right)
ref = np.exp(-((xn[:, None] - yn[None]) ** 2).sum(-1)) @ bn
err = float(np.abs(c.detach().numpy() - ref).max())
print(json.dumps({"import": after_import, "call": sorted(m for m in HEAVY if m in sys.modules),
                  "err": err, "grad": gy.abs().sum().item()}))
"""

NUMPY = """
import json, sys
import numpy as np
import tvmred.numpy as tn
after_import = sorted(m for m in HEAVY + ["torch"] if m in sys.modules)
rng = np.random.default_rng(0)
x, y, b = rng.random((50, 3)), rng.random((70, 3)), rng.random((70, 2))
g = tn.Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
c = g(x, y, b)
nn = tn.Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", opt_arg=4,
               axis=1)(x, y)
d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
err = float(np.abs(c - np.exp(-d2) @ b).max())
knn = bool((nn == np.argsort(d2, axis=1, kind="stable")[:, :4]).all())
print(json.dumps({"import": after_import, "call": sorted(m for m in HEAVY + ["torch"]
                  if m in sys.modules), "err": err, "knn": knn}))
"""


def child(code, cache):
    env = {
        **os.environ,
        "TVMRED_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n" + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("binding", ["torch", "numpy"])
def test_a_warm_process_imports_nothing_heavy(binding, tmp_path):
    code = TORCH if binding == "torch" else NUMPY
    first = child(code, tmp_path)  # compiles (imports TVM) and fills the disk cache
    assert "tvm" in first["call"]
    warm = child(code, tmp_path)
    assert warm["import"] == [] and warm["call"] == [], warm
    assert warm["err"] < 1e-12
    if binding == "numpy":
        assert warm["knn"]


COMPILE = """
import json, os, sys, torch
from tvmred.torch import Genred
x, y = torch.rand(40, 3, dtype=torch.float64), torch.rand(60, 3, dtype=torch.float64)
b = torch.rand(60, 2, dtype=torch.float64)
c = Genred("Exp(-SqDist(x,y)*IntCst(2))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)(
    x, y, b)
import numpy as np  # the reference in numpy: torch's float64 exp(..) @ b is 3e-10 off in
xn, yn, bn = x.numpy(), y.numpy(), b.numpy()  # some processes (tests/test_cache.py)
ref = np.exp(-2 * ((xn[:, None] - yn[None]) ** 2).sum(-1)) @ bn
err = float(np.abs(c.numpy() - ref).max() / np.abs(ref).max())
compiled = "tvm" in sys.modules
with_ml = "ml_dtypes" in sys.modules
import ml_dtypes  # still importable afterwards
print(json.dumps({"compiled": compiled, "ml_dtypes": with_ml, "err": err,
                  "bf16": ml_dtypes.bfloat16.__name__}))
"""


@pytest.mark.parametrize("full", [False, True])
def test_a_compile_imports_tvm_without_ml_dtypes(full, tmp_path, monkeypatch):
    """A fresh process that compiles (empty cache, no compile server) imports and uses TVM
    without ml_dtypes (0.5-0.7 s of its first call; tvmred/_tvm.py), the answer right and
    ml_dtypes importable after; TVMRED_TVM_FULL_IMPORT=1 imports TVM as it is."""
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "0")
    monkeypatch.setenv("TVMRED_TVM_FULL_IMPORT", "1" if full else "0")
    out = child(COMPILE, tmp_path)
    assert out["compiled"] and out["err"] < 1e-12 and out["bf16"] == "bfloat16"
    assert out["ml_dtypes"] == full


NUMPY_COMPILE = """
import json, sys
import numpy as np
import tvmred.numpy as tn
rng = np.random.default_rng(1)
x, y, b = rng.random((40, 3)), rng.random((60, 3)), rng.random((60, 2))
c = tn.Genred("Exp(-SqDist(x,y)*IntCst(3))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
              axis=1)(x, y, b)
ref = np.exp(-3 * ((x[:, None] - y[None]) ** 2).sum(-1)) @ b
err = float(np.abs(c - ref).max() / np.abs(ref).max())
compiled, with_torch = "tvm" in sys.modules, "torch" in sys.modules
import torch  # still importable afterwards
print(json.dumps({"compiled": compiled, "torch": with_torch, "err": err,
                  "t": float(torch.ones(2).sum())}))
"""


def test_a_numpy_process_compiles_without_torch(tmp_path, monkeypatch):
    """TVM's FFI package imports torch when it is installed: a numpy process's first compile
    took 2.5 s instead of 0.9 (and the compile server paid it too).  TVM is imported with
    torch blocked (tvmred/_tvm.py); torch is importable after."""
    monkeypatch.setenv("TVMRED_COMPILE_SERVER", "0")
    monkeypatch.setenv("TVMRED_TVM_FULL_IMPORT", "0")
    out = child(NUMPY_COMPILE, tmp_path)
    assert out["compiled"] and out["err"] < 1e-12 and out["t"] == 2.0
    assert not out["torch"]


IMPORT = """
import json, sys
from tvmred import _tvm
answered = {"ops": 0, "types": 0}
no_op = _tvm._no_op

def counted_no_op(name):
    answered["ops"] += 1
    return no_op(name)

_tvm._no_op = counted_no_op
checked = _tvm._checked

def counting(lookup, names, missing):
    if missing is not counted_no_op:
        def missing(name, _m=missing):
            answered["types"] += 1
            return _m(name)
    return checked(lookup, names, missing)

_tvm._checked = counting
tvm = _tvm.load()
with_torch = "torch" in sys.modules
lazy = type(sys.modules["tvm.relax"]).__name__
try:
    tvm.ir.Op.get("tvmred.no_such_op")
except AttributeError as e:
    after = str(e)
print(json.dumps({"answered": answered, "lazy": lazy, "after": after,
                  "relax": tvm.relax.Function.__name__, "torch": with_torch}))
"""


def test_tvm_is_imported_without_cpp_errors_and_without_relax(tmp_path, monkeypatch):
    """TVM's import asks for ~110 operators and an object type this build lacks: each miss
    was a C++ error whose backtrace (libbacktrace) read every loaded library's symbols --
    0.75 s with torch loaded.  tvmred answers them from the registries' listings while TVM is
    imported, makes tvm.relax a lazy module, and restores TVM's own lookups after."""
    monkeypatch.setenv("TVMRED_TVM_FULL_IMPORT", "0")
    out = child(IMPORT, tmp_path)
    assert out["answered"]["ops"] >= 100 and out["answered"]["types"] >= 1, out
    assert out["lazy"] == "_LazyModule" and out["relax"] == "Function"
    assert "Check failed" in out["after"], "GetOp is not TVM's own after the import"
    assert not out["torch"]
