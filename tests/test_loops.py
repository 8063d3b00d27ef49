"""Loop operations (tvmred/loops.py): a per-pair program with loops and arrays -- soft-DTW of
sequences longer than the unrolled form takes -- against the textbook recursion in numpy
(float64) and its finite differences, through every CPU kernel form (row blocks that the rows
do not fill, split-j, ranges); the arrays are per SIMD lane (a lane reading another's cells
gives wrong values, not an error).  CI runs this file again with kernels for a second CPU
family (another vector width)."""

import numpy as np
import pytest
import torch

from tvmred import ops
from tvmred.errors import DimError, FormulaError
from tvmred.ops import _softdtw_ref
from tvmred.torch import Genred, LazyTensor


def softdtw_numpy(a, b, gamma):
    """Soft-DTW (Cuturi & Blondel 2017) of two 1-D sequences, its textbook recursion."""
    n, m = len(a), len(b)
    r = np.full((n + 1, m + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
            lo = prev.min()
            r[i, j] = (
                (a[i - 1] - b[j - 1]) ** 2 + lo - gamma * np.log(np.exp(-(prev - lo) / gamma).sum())
            )
    return r[n, m]


def weighted(xs, ys, bs, gamma):
    """sum_j softdtw(x_i, y_j) b_j per row i, in numpy float64."""
    return np.array([sum(softdtw_numpy(xi, yj, gamma) * bj for yj, bj in zip(ys, bs)) for xi in xs])


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_long_sequences_against_the_textbook_recursion(dtype, rtol):
    """23 x 17 cells (a loop; the unrolled form stops at ops.SOFTDTW_CELLS): values, and the
    gradients in x, y and gamma against central differences of the numpy recursion."""
    n, m = 23, 17
    assert n * m > ops.SOFTDTW_CELLS
    torch.manual_seed(3)
    x = torch.randn(9, n, dtype=torch.float64)
    y = torch.randn(7, m, dtype=torch.float64)
    b = torch.rand(7, 1, dtype=torch.float64)
    gamma = 0.6
    xt, yt = x.to(dtype, copy=True).requires_grad_(), y.to(dtype, copy=True).requires_grad_()
    gt = torch.tensor([gamma], dtype=dtype, requires_grad=True)
    lt = LazyTensor(xt[:, None]).softdtw_sqdist(LazyTensor(yt[None]), gt)
    out = (lt * LazyTensor(b.to(dtype)[None])).sum(1)
    xs, ys, bs = x.numpy(), y.numpy(), b.numpy()[:, 0]
    ref = weighted(xs, ys, bs, gamma)
    np.testing.assert_allclose(out.detach().double().numpy()[:, 0], ref, rtol=rtol)
    e = torch.rand(9, 1, dtype=dtype)
    gx, gy, gg = torch.autograd.grad(out, [xt, yt, gt], e)
    en, h = e.double().numpy()[:, 0], 1e-5

    def loss(xs_, ys_, gamma_):
        return (weighted(xs_, ys_, bs, gamma_) * en).sum()

    for grad, arr, at in (
        (gx, xs, (4, 11)),
        (gx, xs, (0, n - 1)),
        (gy, ys, (2, 0)),
        (gy, ys, (6, m - 1)),
    ):
        plus, minus = arr.copy(), arr.copy()
        plus[at] += h
        minus[at] -= h
        args = lambda a: (a, ys) if arr is xs else (xs, a)  # noqa: E731
        fd = (loss(*args(plus), gamma) - loss(*args(minus), gamma)) / (2 * h)
        np.testing.assert_allclose(grad[at].item(), fd, rtol=max(rtol, 1e-6) * 50, atol=1e-6)
    fd = (loss(xs, ys, gamma + h) - loss(xs, ys, gamma - h)) / (2 * h)
    np.testing.assert_allclose(gg.item(), fd, rtol=max(rtol, 1e-6) * 50)


def test_few_rows_split_j_and_ranges():
    """The kernel forms a call picks by its sizes: few output rows (split-j chunks of the
    reduced index where the cores outnumber the row blocks), block-sparse ranges (rows as
    (block, row) pairs); against torch's evaluation of the recursion on the dense grid."""
    n, m = 7, 9
    torch.manual_seed(1)
    M, N = 300, 8200
    x = torch.randn(M, n, dtype=torch.float64)
    y = torch.randn(N, m, dtype=torch.float64)
    g = torch.tensor([0.9], dtype=torch.float64)
    K = Genred("SoftDTW_SqDist(x,y,g)", [f"x = Vi({n})", f"y = Vj({m})", "g = Pm(1)"], axis=1)
    few = _softdtw_ref(x[:3, None].expand(3, N, n), y[None].expand(3, N, m), g.expand(3, N, 1))
    torch.testing.assert_close(K(x[:3], y, g), few.sum(1), rtol=1e-11, atol=0)
    y = y[:400]
    dense = _softdtw_ref(
        x[:, None].expand(M, 400, n), y[None].expand(M, 400, m), g.expand(M, 400, 1)
    )
    ranges_i = torch.tensor([[0, 150], [150, 300]], dtype=torch.int32)
    ranges_j = torch.tensor([[0, 200], [200, 400]], dtype=torch.int32)
    slices = torch.tensor([1, 2], dtype=torch.int32)
    mask = torch.zeros(M, 400, 1, dtype=torch.float64)
    mask[:150, :200] = 1
    mask[150:, 200:] = 1
    out = K(x, y, g, ranges=(ranges_i, slices, ranges_j, ranges_j, slices, ranges_i))
    torch.testing.assert_close(out, (dense * mask).sum(1), rtol=1e-11, atol=0)


def test_a_second_derivative_and_an_oversized_gradient_are_clear_errors(monkeypatch):
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, dtype=torch.float64)
    out = LazyTensor(x[:, None]).softdtw_sqdist(LazyTensor(y[None]), 0.5).sum(1)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(FormulaError, match="second derivatives of SoftDTW_SqDist"):
        torch.autograd.grad(g.sum(), x)
    monkeypatch.setattr(ops, "SOFTDTW_LOOP_CELLS", 20)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)  # a formula not seen yet
    out = LazyTensor(x[:, None]).softdtw_sqdist(LazyTensor(y[None]), 0.5).sum(1)
    with pytest.raises(DimError, match="keeps the 35 cells"):
        torch.autograd.grad(out.sum(), x)
