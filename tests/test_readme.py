"""One test per README claim that had none, each against dense float64 torch: the remaining
reductions and aliases, higher-order gradients, formula syntax, declarations, constant
leaves, float32 gradients, ranges with every reduction kind, NaN on axis 0, threads, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tvmred.torch import Genred

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
AL = ["x = Vi(2)", "y = Vj(2)", "b = Vj(3)"]


def rand(*shape, dtype=F64):
    return torch.rand(*shape, dtype=torch.float64).to(dtype)


def problem(M=30, N=40, dtype=F64):
    return rand(M, 2, dtype=dtype), rand(N, 2, dtype=dtype), rand(N, 3, dtype=dtype)


def f_dense(x, y):  # F = -|x - y|^2, (M, N)
    return -((x[:, None] - y[None]) ** 2).sum(-1)


# ------------------------------------------------------------------ reductions and aliases


def test_max_sumshiftexp_weight_raw_state():
    x, y, b = problem()
    got = Genred("-SqDist(x,y)", AL, reduction_op="Max_SumShiftExpWeight", formula2="b", axis=1)(
        x, y, b
    )
    F = f_dense(x, y)
    m = F.max(1, keepdim=True).values
    torch.testing.assert_close(got, torch.cat([m, torch.exp(F - m) @ b], 1))


def test_softmax_is_an_alias_of_sumsoftmaxweight():
    x, y, b = problem()
    got = Genred("-SqDist(x,y)", AL, reduction_op="SoftMax", formula2="b", axis=1)(x, y, b)
    torch.testing.assert_close(got, torch.softmax(f_dense(x, y), 1) @ b)


def test_logsumexp_with_a_weight():
    x, y, b = problem()
    got = Genred("-SqDist(x,y)", AL, reduction_op="LogSumExp", formula2="b", axis=1)(x, y, b)
    torch.testing.assert_close(got, torch.log(torch.exp(f_dense(x, y)) @ b))


# ------------------------------------------------------------------- higher-order gradients


@pytest.mark.parametrize(
    "red,kw",
    [
        ("Max", {}),
        ("KMin", {"opt_arg": 2}),
        ("Min_ArgMin", {}),
        ("Max_ArgMax", {}),
        ("KMin_ArgKMin", {"opt_arg": 2}),
        ("LogSumExpWeight", {"formula2": "b"}),
    ],
)
def test_second_order_gradients(red, kw):
    """gradgradcheck: second derivatives by finite differences of the first."""
    x, y, b = problem(M=5, N=7)
    g = Genred("-SqDist(x,y)*Elem(b,0)" if "KMin" in red or "Max" in red or "Min" in red else "-SqDist(x,y)",
               AL, reduction_op=red, axis=1, **kw)  # fmt: skip

    def value(*a):
        out = g(*a)
        return out[0] if isinstance(out, tuple) else out

    ts = [t.requires_grad_() for t in (x, y, b)]
    assert torch.autograd.gradgradcheck(value, ts)


# ------------------------------------------------------------------------- formula syntax


def test_infix_comparisons_and_real_literals():
    x, y = rand(20, 1), rand(25, 1)
    al = ["x = Vi(1)", "y = Vj(1)"]
    for text, ref in [
        ("(x < y) + (x >= 0.5*y)*2.5e-1 - (x == x)", (x < y.T) + (x >= 0.5 * y.T) * 0.25 - 1.0),
        ("(x != y)*1.5 + (x <= y) + (x > .75)", (x != y.T) * 1.5 + (x <= y.T) + (x > 0.75)),
    ]:
        got = Genred(text, al, axis=1)(x, y)
        torch.testing.assert_close(got, ref.to(F64).sum(1, keepdim=True), msg=text)


def test_var_declarations():
    x, y = rand(20, 3), rand(25, 3)
    g = Genred("SqDist(a,b)", ["a = Var(0,3,0)", "b = Var(1,3,1)"], axis=1)
    torch.testing.assert_close(g(x, y), ((x[:, None] - y[None]) ** 2).sum(-1).sum(1, keepdim=True))
    g2 = Genred("SqDist(Var(0,3,0),Var(1,3,1))", ["Var(0,3,0)", "Var(1,3,1)"], axis=0)
    torch.testing.assert_close(g2(x, y), ((x[:, None] - y[None]) ** 2).sum(-1).sum(0)[:, None])


def test_constant_leaves():
    x, y = rand(20, 2), rand(25, 1)
    got = Genred(
        "RatCst(1,3)*x + IntInv(4)*y + Zero(2) + Sum(Zero(3))", ["x = Vi(2)", "y = Vj(1)"], axis=1
    )(x, y)
    torch.testing.assert_close(got, 25 * x / 3 + y.sum() / 4)


# --------------------------------------------------------------------- float32 gradients


def dense_reduction(red, x, y, b, axis):
    """Float64 reference: F = -|x - y|^2 (Sum: Exp(F) * b), reduced over j (axis 1) or i."""
    F = f_dense(x, y)
    if red == "Sum":
        G = torch.exp(F)[..., None] * b[None]
        return G.sum(axis)
    F = F if axis == 1 else F.T
    if red == "LogSumExp":
        return torch.logsumexp(F, 1, keepdim=True)
    if red == "Min":
        return F.min(1, keepdim=True).values
    return torch.softmax(F, 1) @ b  # SumSoftMaxWeight, axis 1


CASES32 = [
    ("Sum", 1),
    ("Sum", 0),
    ("LogSumExp", 1),
    ("LogSumExp", 0),
    ("Min", 0),
    ("SumSoftMaxWeight", 1),
]


@pytest.mark.parametrize("red,axis", CASES32)
def test_float32_gradients(red, axis):
    """Gradients of float32 reductions w.r.t. every input, against float64 autograd on the
    dense problem: relative error below 1e-4 (float32 has 6e-8; a broken gradient is off
    by O(1))."""
    x, y, b = problem(M=300, N=400, dtype=torch.float32)
    formula = "Exp(-SqDist(x,y))*b" if red == "Sum" else "-SqDist(x,y)"
    kw = {"formula2": "b"} if red == "SumSoftMaxWeight" else {}
    ts = [t.requires_grad_() for t in (x, y, b)]
    out = Genred(formula, AL, reduction_op=red, axis=axis, **kw)(*ts)
    refs = [t.detach().double().requires_grad_() for t in ts]
    want = dense_reduction(red, *refs, axis)
    assert out.dtype == torch.float32 and out.shape == want.shape
    e = torch.randn_like(want)
    got_g = torch.autograd.grad(out, ts, e.float(), allow_unused=True)
    want_g = torch.autograd.grad(want, refs, e, allow_unused=True)
    for name, g, w, t in zip("xyb", got_g, want_g, ts):
        g = torch.zeros_like(t) if g is None else g
        w = torch.zeros_like(t, dtype=F64) if w is None else w
        err = ((g.double() - w).abs().max() / w.abs().max().clamp(min=1e-30)).item()
        assert err < 1e-4, (name, err)


# ----------------------------------------------------------- ranges with every reduction


def clustered(M=200, N=240):
    from tvmred.torch.cluster import (
        cluster_ranges_centroids,
        from_matrix,
        grid_cluster,
        sort_clusters,
    )

    x, y = rand(M, 2), rand(N, 2)
    (x,), lx = sort_clusters((x,), grid_cluster(x, 0.34))
    (y, b), ly = sort_clusters((y, rand(N, 3)), grid_cluster(y, 0.34))
    rx, cx, _ = cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < 0.15
    keep[0] = False  # an output cluster with no reduced range: empty rows
    return x, y, b, from_matrix(rx, ry, keep), keep[lx][:, ly]


@pytest.mark.parametrize("red", ["LogSumExp", "Max_ArgMax", "KMin_ArgKMin", "SumSoftMaxWeight"])
def test_ranges_with_other_reductions(red):
    """Against the dense reduction with the masked pairs at -inf; an output cluster with no
    reduced range reduces over nothing (the reducer's identity, as the dense reference)."""
    x, y, b, ranges, mask = clustered()
    kw = {"formula2": "b"} if red == "SumSoftMaxWeight" else {"opt_arg": 3} if "KMin" in red else {}
    got = Genred("-SqDist(x,y)", AL, reduction_op=red, axis=1, **kw)(x, y, b, ranges=ranges)
    F = f_dense(x, y).masked_fill(~mask, float("-inf"))
    has = mask.any(1)
    assert 0 < has.sum() < len(has)
    if red == "LogSumExp":
        torch.testing.assert_close(got, torch.logsumexp(F, 1, keepdim=True))
    elif red == "SumSoftMaxWeight":
        torch.testing.assert_close(got, torch.softmax(F, 1) @ b, equal_nan=True)
        assert got[~has].isnan().all()  # 0 / 0, as the dense softmax of an empty row
    elif red == "Max_ArgMax":
        v, i = F.max(1, keepdim=True)
        torch.testing.assert_close(got[0], v)
        assert torch.equal(got[1][has], i[has]) and torch.all(got[1][~has] == -1)
    else:
        masked = f_dense(x, y).masked_fill(~mask, float("inf"))  # excluded pairs: never selected
        v, i = masked.sort(dim=1, stable=True)
        torch.testing.assert_close(got[0], v[:, :3])
        valid = v[:, :3] < float("inf")
        assert torch.equal(got[1][valid], i[:, :3][valid]) and torch.all(got[1][~valid] == -1)


# ------------------------------------------------------------------- NaN on axis 0, float32


@pytest.mark.parametrize("red", ["Min", "Max", "LogSumExp", "Sum"])
def test_inf_and_nan_like_torch_axis0_float32(red):
    x = torch.tensor([[1.0], [float("inf")], [-2.0], [float("-inf")], [float("nan")], [0.5]])
    for rows in ([0, 2, 5], [0, 1, 2], [2, 3, 5], [1, 3], [0, 4, 2], [4]):
        xx = x[rows]
        got = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op=red, axis=0)(
            xx, torch.zeros(3, 1)
        )[:, 0]
        t = xx[:, 0]
        want = {"Min": t.min(), "Max": t.max(), "LogSumExp": torch.logsumexp(t, 0), "Sum": t.sum()}[
            red
        ]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want.expand(3), equal_nan=True, msg=f"{red} of {t}")
    if red in ("Min", "Max"):
        idx = Genred("x", ["x = Vi(1)", "y = Vj(1)"], reduction_op=f"Arg{red}", axis=0)(
            x, torch.zeros(1, 1)
        )
        assert idx.item() == 4  # the first NaN, as torch.argmin / argmax


# ------------------------------------------------------------------------ threads, CLI


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**env, "PYTHONPATH": path, **extra}


@pytest.mark.parametrize("preset", [None, "1"])
def test_tvm_num_threads_default(preset):
    code = "import os, torch; torch.set_num_threads(2); import tvmred; print(os.environ['TVM_NUM_THREADS'])"
    env = child_env(**({"TVM_NUM_THREADS": preset} if preset else {}))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (preset or "2")


def test_cli_export_tune_cache(tmp_path):
    """`tvmred export`, `tvmred tune`, `tvmred cache list|clear` as a user runs them."""
    env = child_env(TVMRED_CACHE_DIR=str(tmp_path / "cache"))

    def cli(*args):
        r = subprocess.run(
            [sys.executable, "-m", "tvmred", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"routines": [{"name": "g", "formula": "Exp(-SqDist(x,y))*b", "axis": 1,
                                              "aliases": ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]}]}))  # fmt: skip
    out = cli("export", str(spec), str(tmp_path / "lib"))
    assert "exported 1 kernel(s) for 1 routine(s)" in out
    manifest = json.loads((tmp_path / "lib" / "manifest.json").read_text())
    assert [r["name"] for r in manifest["routines"]] == ["g"]
    out = cli(
        "tune",
        "Exp(-SqDist(x,y))*b",
        "x = Vi(3)",
        "y = Vj(3)",
        "b = Vj(1)",
        "--M",
        "500",
        "--N",
        "500",
        "--trials",
        "2",
    )
    assert "best {'row_block':" in out
    db = json.loads((tmp_path / "cache" / "tuning.json").read_text())
    assert len(db) == 1
    call = "import torch; from tvmred.torch import Genred; Genred('Sin(x)', ['x = Vi(2)'], axis=1)(torch.rand(3, 2))"
    r = subprocess.run(
        [sys.executable, "-c", call], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    out = cli("cache", "list")
    assert "1 kernel(s)" in out and "Sin(Var(0,2,0))" in out
    cli("cache", "clear")
    assert "0 kernel(s)" in cli("cache", "list")
    assert (tmp_path / "cache" / "tuning.json").exists()  # tuning records outlive kernels
