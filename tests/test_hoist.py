"""One-index sub-formulas computed once per row (tvmred.hoist): which ones, and the answers
(values, gradients, K-min indices, weights) against dense float64 torch."""

import dataclasses

import pytest
import torch

from tvmred import hoist, schedules
from tvmred.torch import Genred
from tvmred.tree import postorder


def normalize(t):
    return torch.nn.functional.normalize(t, dim=-1)


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


COS = "Exp((Normalize(x)|Normalize(y))*3)*b"
COS_ALIASES = ["x = Vi(5)", "y = Vj(5)", "b = Vj(2)"]


def hoist_cost(monkeypatch, cost: tuple) -> None:
    """CPU calls decide with ``cost`` = (per sub-formula kernel, per value it writes)."""
    tpl = dataclasses.replace(schedules.TEMPLATES["llvm"], hoist_cost=cost)
    monkeypatch.setitem(schedules.TEMPLATES, "llvm", tpl)


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """Hoisted at any size here (by default only calls of enough pairs are)."""
    hoist_cost(monkeypatch, (0, 0))


def test_only_calls_of_enough_pairs_run_the_hoisted_kernels(monkeypatch):
    """The operations saved (pairs x work a pair) against the sub-formulas' cost (a kernel
    each, and their values: here 40 x-rows and n y-rows of 5 values): hoisted where they
    reach it -- the sub-formulas' kernels and the pair kernel reading them; below, the pair
    kernel alone.  Both answers as torch's."""
    g = Genred(COS, COS_ALIASES, axis=1)
    h = hoist.plan(g.reduction, "float64")
    assert h.work > 0
    per_kernel, per_value = 1000, 3
    hoist_cost(monkeypatch, (per_kernel, per_value))
    spent = lambda n: 2 * per_kernel + per_value * 5 * (40 + n)  # noqa: E731
    n = next(n for n in range(1, 1000) if 40 * n * h.work >= spent(n))  # the rule's break-even
    ran = lambda r: any(k[0] == "kernel" for k in r.memo)  # noqa: E731
    x = rand(40, 5)
    for rows, hoisted in [(n - 1, False), (n, True)]:  # (the plain kernel: only in the first)
        y, b = rand(rows, 5), rand(rows, 2)
        want = torch.exp(3 * normalize(x) @ normalize(y).T) @ b
        torch.testing.assert_close(g(x, y, b), want)
        assert ran(h.main) == hoisted and ran(g.reduction), rows


def test_the_normalized_points_are_computed_per_row():
    """Both Normalize(x) (i only) and Normalize(y) (j only) leave the pair kernel: it reads
    two more variables, one per index, and no Normalize; a formula whose one-index parts are
    plain variables (the Gaussian) or too small (Square of a 3-vector) keeps its kernel; and
    a sub-formula with more values than its variables (TensorProd(y, y)) stays in it."""
    g = Genred(COS, COS_ALIASES, axis=1)
    h = hoist.plan(g.reduction, "float64")
    assert h is not None and len(h.subs) == 2
    assert sorted(hoist.side(h, ks) for _, ks in h.subs) == [0, 1]
    assert [v.params[1:] for v in h.main.args[3:]] == [(5, 0), (5, 1)]
    assert not any(n.op == "Normalize" or n.op == "Rsqrt" for n in postorder(h.main.formula))
    # the x-gradient's pair kernel: nor the norm of x (a dot product of 5 values, one result)
    from tvmred.reductions import plan_reductions

    (grad,) = plan_reductions(g.reduction.vjp(0))
    main = hoist.plan(grad, "float64").main.formula
    assert not any(n.op == "Rsqrt" for n in postorder(main)), str(main)
    for text, al in [
        ("Exp(-SqDist(x,y))*b", COS_ALIASES),
        ("Exp(Square(x)|y)*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]),
        ("(TensorProd(Exp(y),Exp(y))|TensorProd(x,x))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]),
    ]:
        assert hoist.plan(Genred(text, al, axis=1).reduction, "float64") is None, text
    assert hoist.plan(g.reduction, "float16") is None  # halves: rounded between kernels


@pytest.mark.parametrize("axis", [0, 1])
def test_values_and_gradients_as_torch(axis):
    g = Genred(COS, COS_ALIASES, axis=axis)
    x, y = rand(40, 5).requires_grad_(), rand(30, 5).requires_grad_()
    b = rand(40 if axis == 0 else 30, 2)
    if axis == 0:  # b is a j-variable: with axis=0 the output rows are the j
        g = Genred(COS, ["x = Vi(5)", "y = Vj(5)", "b = Vi(2)"], axis=0)
    got = g(x, y, b)
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    k = torch.exp(3 * normalize(xr) @ normalize(yr).T)
    want = k @ b if axis == 1 else k.T @ b
    torch.testing.assert_close(got, want)
    e = torch.randn_like(want)
    gx, gy = torch.autograd.grad(got, (x, y), e)
    wx, wy = torch.autograd.grad(want, (xr, yr), e)
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gy, wy)


def test_k_nearest_by_angle_and_a_softmax_weight():
    """A K-min of a formula with one-index parts, and SumSoftMaxWeight whose weight formula
    is one-index (its own sub-formula of the Concat the kernel reduces)."""
    x, y = rand(50, 4), rand(300, 4)
    knn = Genred("-(Normalize(x)|Normalize(y))", ["x = Vi(4)", "y = Vj(4)"],
                 reduction_op="ArgKMin", axis=1, opt_arg=5)  # fmt: skip
    assert hoist.plan(knn.reduction, "float64") is not None
    cos = normalize(x) @ normalize(y).T
    assert torch.equal(knn(x, y), cos.topk(5, dim=1).indices)
    w = Genred("-SqDist(x,y)", ["x = Vi(4)", "y = Vj(4)"], reduction_op="SumSoftMaxWeight",
               axis=1, formula2="Exp(Normalize(y))*2")  # fmt: skip
    assert hoist.plan(w.reduction, "float64") is not None
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    torch.testing.assert_close(w(x, y), torch.softmax(-d2, 1) @ (2 * torch.exp(normalize(y))))


def test_float32_and_halves_and_batches():
    x, y, b = rand(2, 60, 5), rand(1, 70, 5), rand(2, 70, 2)
    k = torch.exp(3 * normalize(x) @ normalize(y).transpose(-1, -2))
    want = k @ b
    g = Genred(COS, COS_ALIASES, axis=1)
    torch.testing.assert_close(g(x, y, b), want)  # batch dims, y broadcast
    got32 = g(x.float(), y.float(), b.float())
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)
    got16 = g(x.half(), y.half(), b.half())  # not hoisted, computed in float32
    torch.testing.assert_close(got16.double(), want, rtol=2e-2, atol=2e-2)


def test_block_sparse_ranges():
    """The sub-formulas over every row, the pair kernel over the kept cluster pairs only."""
    from tvmred.torch.cluster import from_matrix

    x, y, b = rand(60, 5), rand(50, 5), rand(50, 2)
    rx = torch.tensor([[0, 25], [25, 60]], dtype=torch.int32)
    ry = torch.tensor([[0, 20], [20, 50]], dtype=torch.int32)
    keep = torch.tensor([[True, False], [True, True]])
    mask = torch.zeros(60, 50, dtype=torch.bool)
    mask[:25, :20] = mask[25:, :] = True
    k = torch.exp(3 * normalize(x) @ normalize(y).T) * mask
    got = Genred(COS, COS_ALIASES, axis=1)(x, y, b, ranges=from_matrix(rx, ry, keep))
    torch.testing.assert_close(got, k @ b)


def test_signed_zeros_and_nan_pass_through():
    """A hoisted value of -0 stays -0 (atan2(-0, -1) = -pi, as torch's), NaN stays NaN."""
    g = Genred("Atan2(Minus(Square(Sin(Abs(x))))*2, y)", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    assert hoist.plan(g.reduction, "float64") is not None
    x = torch.tensor([[0.0], [1.0], [float("nan")]], dtype=torch.float64)
    y = -torch.ones(2, 1, dtype=torch.float64)
    want = torch.atan2(-(x.abs().sin() ** 2) * 2, y.T).sum(1, keepdim=True)
    torch.testing.assert_close(g(x, y), want, equal_nan=True)


def test_numpy_arrays():
    """The numpy binding: the sub-formulas' results are numpy arrays the pair kernel reads."""
    import numpy as np

    from tvmred.numpy import Genred as NumpyGenred

    g = NumpyGenred(COS, COS_ALIASES, axis=1)
    h = hoist.plan(g.reduction, "float64")
    x, y, b = (rand(*s) for s in [(40, 5), (30, 5), (30, 2)])
    want = torch.exp(3 * normalize(x) @ normalize(y).T) @ b
    got = g(x.numpy(), y.numpy(), b.numpy())
    assert isinstance(got, np.ndarray) and any(k[0] == "kernel" for k in h.main.memo)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=1e-12)
