"""Output rows in a space-filling curve's order before a CPU K-min kernel (tvmred.locality):
the order is a permutation that puts near rows together, and the calls that take it give
the dense reference's answers, in the user's row order, values and gradients."""

import numpy as np
import pytest
import torch

from tvmred import launch, locality, schedules
from tvmred.numpy import Genred as NumpyGenred
from tvmred.torch import Genred, LazyTensor

CPU = schedules.for_device("cpu")
M = max(schedules.cpu.LOCAL_MIN_M, 2500)  # output rows: enough for the CPU rule
N = max(schedules.cpu.LOCAL_MIN_N, 700)


@pytest.mark.parametrize("dims", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_order_is_a_permutation_of_near_rows(dims, dtype):
    x = np.random.default_rng(dims).random((4000, dims)).astype(dtype)
    perm = locality.curve_order([x])
    assert perm.dtype == np.int64 and np.array_equal(np.sort(perm), np.arange(len(x)))
    inv = locality.inverse(perm)
    assert np.array_equal(perm[inv], np.arange(len(x)))

    def block_spread(rows):  # mean distance between consecutive rows (8-row blocks)
        blocks = rows[: len(rows) // 8 * 8].reshape(-1, 8, dims)
        return np.linalg.norm(blocks[:, 1:] - blocks[:, :-1], axis=2).mean()

    # the curve's neighbours are nearer than the user's (random) neighbours: much nearer in
    # few dimensions (measured 0.001 / 0.04 / 0.12 / 0.59 of them for 1 / 2 / 3 / 8)
    assert block_spread(x[perm]) < {1: 0.01, 2: 0.1, 3: 0.25, 8: 0.7}[dims] * block_spread(x)


def test_the_order_survives_nan_infinities_and_degenerate_columns():
    x = np.random.default_rng(0).random((3000, 3)).astype(np.float32)
    x[5, 0], x[7, 1], x[9, 2] = np.nan, np.inf, -np.inf
    x[:, 1] = np.where(np.isfinite(x[:, 1]), 0.25, x[:, 1])  # a constant column
    for cols in ([x], [x[:, :1], x[:, 1:]], [np.full((10, 2), np.nan, np.float32)]):
        n = len(cols[0])
        with np.errstate(all="raise"):
            perm = locality.curve_order(cols)
        assert np.array_equal(np.sort(perm), np.arange(n))
    assert locality.curve_order([np.zeros((0, 3), np.float32)]).shape == (0,)
    huge = np.array([[1e308], [-1.7e308], [0.0]])
    assert np.array_equal(np.sort(locality.curve_order([huge])), np.arange(3))


def _dense_kmin(d, k):
    v, i = torch.topk(d, k, dim=1, largest=False)  # distinct random distances: no ties
    return v, i


def _taken(monkeypatch) -> list:
    """The calls that took the curve's order (count), through the launch's own rule."""
    seen = []
    orig = locality.curve_order

    def spy(cols):
        seen.append(len(cols[0]))
        return orig(cols)

    monkeypatch.setattr(locality, "curve_order", spy)
    return seen


@pytest.mark.parametrize("red", ["ArgKMin", "KMin", "KMin_ArgKMin"])
def test_kmin_calls_in_curve_order_match_the_dense_reference(red, monkeypatch):
    seen = _taken(monkeypatch)
    x, y = torch.rand(M, 3), torch.rand(N, 3)
    f = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op=red, axis=1, opt_arg=7)
    out = f(x, y)
    assert seen == [M] and CPU.local_rows(red, 3, M, N)
    v, i = _dense_kmin(torch.cdist(x.double(), y.double()) ** 2, 7)
    if red == "ArgKMin":
        assert torch.equal(out, i)
    elif red == "KMin":
        torch.testing.assert_close(out.double(), v, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(out[0].double(), v, rtol=1e-5, atol=1e-6)
        assert torch.equal(out[1], i)


def test_curve_order_over_j_with_two_variables_and_gradients(monkeypatch):
    """axis=0 (output rows are the j), two output-indexed variables, and the gradient of a
    KMin -- through the selected pairs -- against torch's own autograd of the dense form."""
    seen = _taken(monkeypatch)
    y = torch.rand(M, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(M, 1, dtype=torch.float64)
    x = torch.rand(N, 2, dtype=torch.float64, requires_grad=True)
    f = Genred(
        "SqDist(x,y)+w", ["x = Vi(2)", "y = Vj(2)", "w = Vj(1)"], reduction_op="KMin", axis=0,
        opt_arg=4,
    )  # fmt: skip
    out = f(x, y, w)
    assert seen == [M]
    dense = ((x[:, None, :] - y[None, :, :]) ** 2).sum(2) + w[:, 0][None, :]  # (N, M)
    ref = torch.topk(dense.T, 4, dim=1, largest=False).values
    torch.testing.assert_close(out, ref)
    g = torch.rand_like(out)
    gx, gy = torch.autograd.grad(out, (x, y), g)
    rx, ry = torch.autograd.grad(ref, (x, y), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_numpy_and_lazytensor_calls_take_the_order(monkeypatch):
    seen = _taken(monkeypatch)
    rng = np.random.default_rng(1)
    x, y = rng.random((M, 3), dtype=np.float32), rng.random((N, 3), dtype=np.float32)
    f = NumpyGenred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], "ArgKMin", axis=1, opt_arg=5)
    ref = _dense_kmin(torch.cdist(torch.from_numpy(x).double(), torch.from_numpy(y).double()), 5)
    assert np.array_equal(f(x, y), ref[1].numpy())
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lazy = ((LazyTensor(xt[:, None, :]) - LazyTensor(yt[None, :, :])) ** 2).sum(-1)
    assert torch.equal(lazy.argKmin(5, dim=1), ref[1])
    assert seen == [M, M]


def test_the_rule_leaves_other_calls_alone(monkeypatch):
    seen = _taken(monkeypatch)
    x, y, b = torch.rand(M, 3), torch.rand(N, 3), torch.rand(N, 1)
    Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=1)(x, y, b)
    small = torch.rand(schedules.cpu.LOCAL_MIN_M - 1, 3)
    f = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", axis=1, opt_arg=7)
    f(small, y)
    assert seen == []
    assert launch.curve_order(f.reduction, (small, y), small.device, len(small), N) is None
