"""tvmred.torch.distributed over 2 and 3 gloo processes on the CPU: every reduction kind, both
axes, float64 and float32, parameters, batch dimensions, uneven shards (a rank with one row) --
values, arg indices and gradients w.r.t. i-, j- and parameter variables against the
single-process Genred (itself checked against dense float64 torch in test_reductions.py) and,
for two cases, against dense float64 torch directly; bad calls raise the same exception on
every rank, and a rank that does not call makes the others time out instead of hanging.

Each group is spawned once (tests/distributed_worker.py, one process per rank) and runs all
its cases; the parent compares the ranks' results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
from test_reductions import AL, ALL, DIFFERENTIABLE, VEC, K, data, dense

from tvmred.torch import Genred

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
M, N = 60, 80  # test_reductions' sizes (its data())


def spawn(world: int, cases: dict, splits: dict, tmp: Path, errors: bool = False) -> list:
    """Run the cases on ``world`` gloo ranks; each rank's results, in rank order."""
    torch.save(cases, tmp / "cases.pt")
    spec = {
        "world": world,
        "rendezvous": str(tmp / "rendezvous"),
        "cases": str(tmp / "cases.pt"),
        "splits": {str(c): s for c, s in splits.items()},
        "out_dir": str(tmp),
        "errors": errors,
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TVM_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = [sys.executable, str(WORKER), str(tmp / "spec.json")]
    procs = [
        subprocess.Popen(
            [*cmd, str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for r in range(world)
    ]
    deadline, logs = time.monotonic() + 600, []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("the ranks did not finish within 600 s (a hang)")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-5000:]}"
    return [torch.load(tmp / f"rank{r}.pt") for r in range(world)]


def case(
    red: str,
    axis: int,
    args: list,
    *,
    formula=None,
    formula2=None,
    aliases=AL,
    k=None,
    differentiate: bool = True,
    lazy: Optional[str] = None,
):
    """A case: the reduction, the global arguments, a cotangent when it is differentiable,
    and the single-process reference (output and gradients w.r.t. every argument)."""
    if formula is None:
        if red in ("LogSumExp", "Max_SumShiftExp", "LogSumExpWeight", "SumSoftMaxWeight"):
            formula = "-SqDist(x,y)"
            formula2 = "b" if "Weight" in red else None
        else:
            formula, k = VEC, (K if "KMin" in red else None)
    g = Genred(formula, aliases, reduction_op=red, axis=axis, opt_arg=k, formula2=formula2)
    cats = [v.params[2] for v in g.reduction.args]
    batch = max(a.dim() - (1 if c == 2 else 2) for a, c in zip(args, cats))
    ts = [a.clone().requires_grad_() for a in args]
    out = g(*ts)
    value = out[0] if isinstance(out, tuple) else out
    cot, grads = None, None
    if red in DIFFERENTIABLE and differentiate:
        cot = torch.randn_like(value)
        grads = torch.autograd.grad(value, ts, cot)
    return {
        "formula": formula,
        "aliases": aliases,
        "red": red,
        "axis": axis,
        "k": k,
        "formula2": formula2,
        "args": list(args),
        "cats": cats,
        "cot": cot,
        "row_dim": batch,
        "lazy": lazy,  # the worker builds this LazyTensor expression (distributed_worker.LAZY)
        "ref": (
            tuple(t.detach() for t in out) if isinstance(out, tuple) else out.detach(),
            grads,
        ),
    }


def assemble(results: list, name: str, c: dict):
    """The whole output and gradients from the ranks' pieces (parameters: every rank's)."""
    outs = [res[name]["out"] for res in results]
    d = c["row_dim"]
    if isinstance(outs[0], tuple):
        out = tuple(torch.cat(p, dim=d) for p in zip(*outs))
    else:
        out = torch.cat(outs, dim=d)
    grads = None
    if c["cot"] is not None:
        grads = []
        for k, cat in enumerate(c["cats"]):
            pieces = [res[name]["grads"][k] for res in results]
            grads.append(pieces if cat == 2 else torch.cat(pieces, dim=-2))
    return out, grads


def close(got, want, tol: float, what: str) -> None:
    if isinstance(want, tuple):
        for a, b in zip(got, want):
            close(a, b, tol, what)
        return
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    if want.dtype == torch.int64:
        assert torch.equal(got, want), what
    else:
        finite = want[want.isfinite()].abs()
        scale = max(finite.max().item() if finite.numel() else 0.0, 1.0)  # 0: rounding noise
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, equal_nan=True, msg=what)


def compare(results: list, cases: dict) -> None:
    for name, c in cases.items():
        out, grads = assemble(results, name, c)
        tol = 1e-11 if c["args"][0].dtype == torch.float64 else 2e-5
        ref_out, ref_grads = c["ref"]
        close(out, ref_out, tol, f"{name}: output")
        if ref_grads is None:
            continue
        for k, (g, w) in enumerate(zip(grads, ref_grads)):
            for piece in g if isinstance(g, list) else [g]:
                close(piece, w, max(tol, 1e-10), f"{name}: gradient w.r.t. argument {k}")


# --------------------------------------------------------------------------------- 2 ranks

SPLITS_2 = {0: [0, 23, M], 1: [0, 47, N]}
AL1 = ["x = Vi(1)", "y = Vj(1)"]


def ties() -> list:
    """Small integers (many equal values on both sides of a shard boundary), inf and NaN: the
    partial states must be merged in global order to pick the same indices as one call."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 4, (M, 1), generator=g).double()
    y = torch.randint(0, 9, (N, 1), generator=g).double()
    y[torch.randperm(N, generator=g)[:6]] = float("inf")
    y[torch.randperm(N, generator=g)[:2]] = float("nan")
    x[torch.randperm(M, generator=g)[:2]] = float("inf")
    return [x, y]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    torch.manual_seed(1)
    cases = {}
    x, y, b = data(torch.float64)
    for red in ALL:
        for axis in (1, 0):
            cases[f"{red}/axis{axis}"] = case(red, axis, [x, y, b])
    x32, y32, b32 = data(torch.float32)
    for red, axis in (("Sum", 1), ("ArgKMin", 0), ("LogSumExp", 1), ("SumSoftMaxWeight", 0)):
        cases[f"{red}/axis{axis}/float32"] = case(red, axis, [x32, y32, b32])
    p, alp = torch.tensor([1.7], dtype=torch.float64), [*AL, "p = Pm(1)"]
    cases["param/Sum"] = case("Sum", 1, [x, y, b, p], formula="Exp(-p*SqDist(x,y))*b", aliases=alp)
    cases["param/KMin"] = case(
        "KMin", 0, [x, y, b, p], formula="p*SqDist(x,y) - Elem(b,0)", aliases=alp, k=3
    )
    cases["param/Max_ArgMax"] = case(
        "Max_ArgMax", 1, [x, y, b, p], formula="Concat(p*SqDist(x,y), Elem(b,1)*p)", aliases=alp
    )
    cases["param/SumSoftMaxWeight"] = case(
        "SumSoftMaxWeight", 1, [x, y, b, p], formula="-p*SqDist(x,y)", formula2="b*p", aliases=alp
    )
    xb, yb, bb = (
        torch.rand(2, M, 3).double(),
        torch.rand(1, N, 3).double(),
        torch.rand(2, N, 2).double(),
    )
    pb = torch.rand(2, 1).double() + 0.5
    cases["batch/Sum"] = case("Sum", 1, [xb, yb, bb])
    cases["batch/KMin_ArgKMin"] = case("KMin_ArgKMin", 0, [xb, yb, bb])
    cases["batch/LogSumExp"] = case(
        "LogSumExp", 1, [xb, yb, bb, pb], formula="-p*SqDist(x,y)", aliases=alp
    )
    cases["lazy/gauss_sum"] = case(
        "Sum", 1, [x, y, b], formula="Exp(-SqDist(x,y))*b", lazy="gauss_sum"
    )
    cases["lazy/sqdist_argkmin"] = case(
        "ArgKMin", 0, [x, y, b], formula="SqDist(x,y)", k=3, lazy="sqdist_argkmin"
    )
    cases["lazy/lse"] = case("LogSumExp", 1, [x, y, b], formula="Sum(b)-SqDist(x,y)", lazy="lse")
    xt, yt = ties()
    for red, k in (("Min_ArgMin", None), ("Max_ArgMax", None), ("KMin_ArgKMin", 5)):
        for axis in (1, 0):
            cases[f"ties/{red}/axis{axis}"] = case(
                red, axis, [xt, yt], formula="Abs(x-y)", aliases=AL1, k=k, differentiate=False
            )
    tmp = tmp_path_factory.mktemp("two_ranks")
    return cases, spawn(2, cases, SPLITS_2, tmp, errors=True)


def test_two_ranks_every_reduction_matches_one_process(two_ranks):
    cases, results = two_ranks
    mine = {n: c for n, c in cases.items() if n.split("/")[0] in ALL and n.count("/") == 1}
    assert len(mine) == 2 * len(ALL)
    assert sum(c["cot"] is not None for c in mine.values()) == 2 * len(DIFFERENTIABLE)
    compare(results, mine)


def test_two_ranks_float32_params_and_batch_dims(two_ranks):
    cases, results = two_ranks
    rest = {n: c for n, c in cases.items() if n.startswith(("param/", "batch/")) or "float32" in n}
    assert len(rest) == 11
    assert sum(c["cot"] is not None for c in rest.values()) == 10  # all but ArgKMin
    compare(results, rest)


def test_two_ranks_lazytensor_reductions(two_ranks):
    """sharded_reduction on LazyTensor reductions (call=False) built from each rank's shards:
    Sum and LogSumExp with gradients w.r.t. x, y, b, ArgKMin over i with global indices."""
    cases, results = two_ranks
    rest = {n: c for n, c in cases.items() if n.startswith("lazy/")}
    assert len(rest) == 3 and sum(c["cot"] is not None for c in rest.values()) == 2
    compare(results, rest)


def test_two_ranks_ties_inf_nan_exactly_as_one_process(two_ranks):
    cases, results = two_ranks
    rest = {n: c for n, c in cases.items() if n.startswith("ties/")}
    assert len(rest) == 6
    compare(results, rest)


def test_two_ranks_against_dense_float64_torch(two_ranks):
    """Independent of the single-process path: the assembled results against dense torch."""
    cases, results = two_ranks
    for name, red, axis in (("Sum/axis1", "Sum", 1), ("KMin_ArgKMin/axis0", "KMin_ArgKMin", 0)):
        c = cases[name]
        out, grads = assemble(results, name, c)
        refs = [a.clone().requires_grad_() for a in c["args"]]
        want = dense(red, *refs, axis)
        close(
            out,
            tuple(w.detach() for w in want) if isinstance(want, tuple) else want.detach(),
            1e-11,
            name,
        )
        w0 = want[0] if isinstance(want, tuple) else want
        for g, w in zip(grads, torch.autograd.grad(w0, refs, c["cot"])):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


ERRORS = {
    "width": ("ValueError", "rank 1: argument 'y' (argument 1, declared Vj(3)) has shape (6, 4)"),
    "dtype": ("TypeError", "mismatched dtypes across ranks"),
    "no_rows": ("ValueError", "rank 1 holds no j-rows"),
    "other_reduction": ("ValueError", "called different sharded reductions"),
    "requires_grad": ("ValueError", "requires grad on ranks [0]"),
    "batch": ("ValueError", "must agree in every dimension but the rows"),
}


def test_bad_calls_raise_the_same_error_on_every_rank(two_ranks):
    _, results = two_ranks
    for name, (kind, text) in ERRORS.items():
        got = [res["errors"][name] for res in results]
        assert got[0] == got[1], (name, got)  # the same exception on both ranks
        assert got[0][0] == kind and text in got[0][1], (name, got[0])


def test_the_group_works_after_errors_and_missing_calls_raise(two_ranks):
    _, results = two_ranks
    xs, ys = [], []
    for rank in range(2):
        g = torch.Generator().manual_seed(rank)
        xs.append(torch.rand(5, 3, generator=g, dtype=torch.float64))
        ys.append(torch.rand(6, 3, generator=g, dtype=torch.float64))
    y = torch.cat(ys)
    for rank in range(2):
        status, out = results[rank]["errors"]["ok_after"]
        assert status == "ok"
        want = ((xs[rank][:, None] - y[None]) ** 2).sum(-1).sum(1, keepdim=True)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    kind, msg = results[0]["hang"]  # rank 1 skipped the backward
    assert kind == "CommunicationError" and "rank 0: the backward" in msg, msg
    kind, msg = results[1]["hang"]  # rank 0 skipped the call
    assert kind == "CommunicationError" and "rank 1: the metadata exchange" in msg, msg


def test_helpers_rows_of_shard_gather(two_ranks):
    _, results = two_ranks
    h0, h1 = (res["helpers"] for res in results)
    assert h0["rows_of"] == [0, 3] and h1["rows_of"] == [3, 5]  # the first rank gets the extra
    whole = torch.arange(20.0).reshape(2, 5, 2)
    assert torch.equal(torch.cat([h0["shard"], h1["shard"]], dim=-2), whole)
    want = torch.cat([torch.zeros(2, 1, 3), torch.ones(2, 2, 3)], dim=1)
    assert torch.equal(h0["gather"], want) and torch.equal(h1["gather"], want)
    want0 = torch.cat(
        [torch.zeros(2, 4, 1, dtype=torch.int64), torch.ones(3, 4, 1, dtype=torch.int64)]
    )
    assert torch.equal(h0["gather_dim0"], want0) and torch.equal(h1["gather_dim0"], want0)
    assert h0["gather_error"] == h1["gather_error"] and h0["gather_error"][0] == "ValueError"
    assert "differ beyond their size along dim 0" in h0["gather_error"][1]


# --------------------------------------------------------------------------------- 3 ranks


def test_three_ranks_uneven_shards(tmp_path):
    """Three ranks, one of them with a single i-row and another with a single j-row."""
    torch.manual_seed(2)
    x, y, b = data(torch.float64)
    cases = {
        "Sum/axis0": case("Sum", 0, [x, y, b]),
        "KMin_ArgKMin/axis1": case("KMin_ArgKMin", 1, [x, y, b]),
        "Max_ArgMax/axis0": case("Max_ArgMax", 0, [x, y, b]),
        "SumSoftMaxWeight/axis1": case("SumSoftMaxWeight", 1, [x, y, b]),
        "ArgMin/axis1": case("ArgMin", 1, [x, y, b]),
    }
    results = spawn(3, cases, {0: [0, 1, 30, M], 1: [0, 40, 41, N]}, tmp_path)
    compare(results, cases)
