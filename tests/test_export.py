"""Ahead-of-time export, then loading in a subprocess with only the TVM runtime."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tvmred

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "targets": [{"kind": "llvm", "mcpu": "x86-64-v3"}, {"kind": "cuda", "arch": "sm_90"}],
    "routines": [
        {
            "name": "ref",
            "formula": "Square(p-a)*Exp(x+y)",
            "aliases": ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"],
            "reduction_op": "Sum",
            "axis": 1,
            "dtypes": ["float32"],
            "gradients": ["y"],
        },
        {
            "name": "nn",
            "formula": "SqDist(x,y)",
            "aliases": ["x = Vi(2)", "y = Vj(2)"],
            "reduction_op": "Min_ArgMin",
            "axis": 1,
            "dtypes": ["float64"],
            "gradients": "all",
        },
        {  # called with g >= 0: the library has only the general kernel (launch.nonneg_params)
            "name": "gauss",
            "formula": "Exp(-g*SqDist(x,y))*b",
            "aliases": ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "g = Pm(1)"],
            "reduction_op": "Sum",
            "axis": 1,
            "dtypes": ["float32"],
            "gradients": [],
        },
        {  # normalized x and y computed once per row: three kernels (tvmred.hoist)
            "name": "cos",
            "formula": "Exp((Normalize(x)|Normalize(y))*3)*a",
            "aliases": ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)"],
            "reduction_op": "Sum",
            "axis": 1,
            "dtypes": ["float32"],
            "gradients": [],
        },
    ],
}

CHILD = r"""
import json, sys, torch
import tvmred
from tvmred.build import compiler_available
lib = tvmred.load(sys.argv[1])
out = {"compiler": compiler_available(), "names": lib.names()}
torch.manual_seed(0)
x, y, a, p = torch.rand(300, 3), torch.rand(500, 3, requires_grad=True), torch.rand(500, 1), torch.rand(1)
c = lib["ref"](x, y, a, p)
(g,) = torch.autograd.grad(c, y, torch.ones_like(c))
yd = y.detach().double().requires_grad_()
cr = (((p.double() - a.double().T) ** 2)[..., None] * torch.exp(x.double()[:, None] + yd[None])).sum(1)
(gr,) = torch.autograd.grad(cr, yd, torch.ones_like(cr))
out["err"] = ((c - cr).abs().max() / cr.abs().max()).item()
out["gerr"] = ((g - gr).abs().max() / gr.abs().max()).item()
xs, ys = torch.rand(50, 2, dtype=torch.float64, requires_grad=True), torch.rand(70, 2, dtype=torch.float64)
v, i = lib["nn"](xs, ys)
d2 = ((xs[:, None] - ys[None]) ** 2).sum(-1)
out["nn_ok"] = bool(torch.equal(i[:, 0], d2.argmin(1)))
(gx,) = torch.autograd.grad(v.sum(), xs)
(gxr,) = torch.autograd.grad(d2.min(1).values.sum(), xs)
out["nn_grad_err"] = (gx - gxr).abs().max().item()
vn, in_ = lib.numpy("nn")(xs.detach().numpy(), ys.numpy())
out["numpy_ok"] = bool((in_[:, 0] == d2.argmin(1).numpy()).all())
g = torch.tensor([0.7])
cg = lib["gauss"](x, y.detach(), a, g)
cgr = torch.exp(-g.double() * ((x.double()[:, None] - y.detach().double()[None]) ** 2).sum(2)) @ a.double()
out["gauss_err"] = ((cg - cgr).abs().max() / cgr.abs().max()).item()
import dataclasses
from tvmred import hoist, schedules
cos = lib["cos"]
xn, yn = (torch.nn.functional.normalize(t.double(), dim=1) for t in (x, y.detach()))
ccr = torch.exp(3 * xn @ yn.T) @ a.double()
out["cos_err"] = []
for hoisted in (False, True):  # at this size: the pair kernel alone; then hoisted
    if hoisted:
        cpu = schedules.TEMPLATES["llvm"]
        schedules.TEMPLATES["llvm"] = dataclasses.replace(cpu, hoist_cost=(0, 0))
    cc = cos(x, y.detach(), a)
    out["cos_err"].append(((cc - ccr).abs().max() / ccr.abs().max()).item())
h = hoist.plan(cos.reduction, "float32")  # (None had the hoisted kernels not been exported)
out["cos_kernels"] = [any(k[0] == "kernel" for k in r.memo) for r in (cos.reduction, h.main)]
for name, call in [("dtype", lambda: lib["ref"](x.double(), y.double(), a.double(), p.double())),
                   ("gradient", lambda: torch.autograd.grad(lib["ref"](x.requires_grad_(), y, a, p).sum(), x))]:
    try:
        call()
        out[name] = "no error"
    except tvmred.KernelNotExported as e:
        out[name] = str(e)
out["compiler_loaded"] = "libtvm_compiler" in open("/proc/self/maps").read()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exported")
    spec = d / "spec.json"
    spec.write_text(json.dumps(SPEC))
    manifest = tvmred.export(spec, d / "lib")
    return d / "lib", json.loads(manifest.read_text())


def test_manifest_lists_every_kernel(exported):
    path, man = exported
    kinds = {(k["device"], k["dtype"], k["red"]) for k in man["kernels"].values()}
    assert ("cpu", "float32", "Sum") in kinds and ("cuda", "float32", "Sum") in kinds
    assert ("cpu", "float64", "Min_ArgMin") in kinds and ("cuda", "float64", "Min_ArgMin") in kinds
    # ref: forward + gradient w.r.t. y; nn: forward + one gathered gradient per argument;
    # gauss: forward; cos: the pair kernel, and the one reading the normalized x's and y's
    # and their kernel (tvmred.hoist: large calls; one for both, their formula is the same)
    assert sum(k["device"] == "cpu" for k in man["kernels"].values()) == 2 + 3 + 1 + 3
    for k in man["kernels"].values():
        data = (path / k["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == k["sha256"] and b"main" in data


def test_load_with_the_runtime_only(exported):
    path, _ = exported
    env = {
        **os.environ,
        "TVM_USE_RUNTIME_LIB": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["compiler"] is False and out["compiler_loaded"] is False
    assert out["names"] == ["cos", "gauss", "nn", "ref"]
    assert out["err"] < 1e-5 and out["gerr"] < 1e-5 and out["gauss_err"] < 1e-5
    assert max(out["cos_err"]) < 1e-5 and out["cos_kernels"] == [True, True]
    assert out["nn_ok"] and out["numpy_ok"] and out["nn_grad_err"] < 1e-12
    assert "no exported kernel" in out["dtype"] and "float64" in out["dtype"]
    assert "no exported kernel" in out["gradient"] and "= x" in out["gradient"]


def test_corrupt_export_is_refused(exported, tmp_path):
    import shutil

    path, man = exported
    copy = tmp_path / "lib"
    shutil.copytree(path, copy)
    f = copy / next(k for k in man["kernels"].values() if k["device"] == "cpu")["file"]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="corrupt"):
        tvmred.load(copy)
