"""Batch dimensions (broadcasting, gradients summed over broadcast dims) and block-sparse
ranges (vs the dense masked reference), with the cluster helpers."""

import numpy as np
import pytest
import torch

from tvmred.numpy import Genred as NpGenred
from tvmred.torch import Genred
from tvmred.torch.cluster import (
    cluster_centroids,
    cluster_ranges,
    cluster_ranges_centroids,
    from_matrix,
    grid_cluster,
    sort_clusters,
)

GAUSS = "Exp(-SqDist(x,y)*s)*b"
AL = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)", "s = Pm(1)"]


def dense_batch(x, y, b, s):
    d2 = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 * s[..., None]) @ b


def test_batch_broadcasting_and_gradients():
    x = torch.rand(2, 3, 20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 30, 3, dtype=torch.float64, requires_grad=True)  # broadcast over dim 0
    b = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)  # no batch dims
    s = torch.rand(2, 1, 1, dtype=torch.float64, requires_grad=True)  # (B1, B2=1, 1) parameter
    c = Genred(GAUSS, AL, axis=1)(x, y, b, s)
    ref_in = [t.detach().clone().requires_grad_() for t in (x, y, b, s)]
    ref = dense_batch(*ref_in)
    assert c.shape == ref.shape == (2, 3, 20, 2)
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad(c, (x, y, b, s), e), torch.autograd.grad(ref, ref_in, e)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


def test_batch_axis0_and_tuple_outputs():
    x = torch.rand(3, 20, 2, dtype=torch.float64)
    y = torch.rand(3, 25, 2, dtype=torch.float64)
    c = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min_ArgMin", axis=0)(x, y)
    d2 = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)  # (B, M, N)
    v, i = d2.min(1)
    torch.testing.assert_close(c[0][..., 0], v)
    assert torch.equal(c[1][..., 0], i)


def test_batch_mismatch_is_reported():
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    with pytest.raises(ValueError, match="batch dimensions do not broadcast"):
        g(torch.rand(2, 5, 1), torch.rand(3, 5, 1))


def clustered_problem(M=400, N=500, dtype=torch.float64):
    x, y = torch.rand(M, 2, dtype=dtype), torch.rand(N, 2, dtype=dtype)
    (x,), lx = sort_clusters((x,), grid_cluster(x, 0.25))
    (y, b), ly = sort_clusters((y, torch.rand(N, 1, dtype=dtype)), grid_cluster(y, 0.25))
    rx, cx, _ = cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < 0.2  # keep nearby cluster pairs only
    mask = keep[lx][:, ly]  # (M, N) point-level mask
    return x, y, b, from_matrix(rx, ry, keep), mask, keep


def test_cluster_helpers():
    x = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.15, 0.05], [0.6, 0.1]])
    lab = grid_cluster(x, 0.5)
    assert lab[0] == lab[2] and len({lab[0].item(), lab[1].item(), lab[3].item()}) == 3
    xs, ls = sort_clusters(x, lab)
    assert torch.all(ls[1:] >= ls[:-1])
    r = cluster_ranges(ls)
    assert r.tolist() == [[a, b] for a, b in zip([0] + r[:, 1].tolist()[:-1], r[:, 1].tolist())]
    c = cluster_centroids(xs, ls)
    for k in range(len(r)):
        torch.testing.assert_close(c[k], xs[r[k, 0] : r[k, 1]].mean(0))


@pytest.mark.parametrize("axis", [1, 0])
def test_ranges_match_dense_masked_reference(axis):
    x, y, b, ranges, mask, keep = clustered_problem()
    assert 0.05 < keep.float().mean() < 0.9  # genuinely block-sparse
    x.requires_grad_()
    y.requires_grad_()
    g = Genred("Exp(-SqDist(x,y)*IntCst(4))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=axis)
    c = g(x, y, b, ranges=ranges)
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    K = torch.exp(-4 * ((xr[:, None] - yr[None]) ** 2).sum(-1)) * mask
    ref = K @ b if axis == 1 else (K * b.T).sum(0)[:, None]
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    for gg, w in zip(torch.autograd.grad(c, (x, y), e), torch.autograd.grad(ref, (xr, yr), e)):
        torch.testing.assert_close(gg, w)


def test_ranges_argmin_indices_are_global():
    x, y, b, ranges, mask, keep = clustered_problem()
    v, i = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min_ArgMin", axis=1)(
        x, y, ranges=ranges
    )
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1).masked_fill(~mask, float("inf"))
    rv, ri = d2.min(1)
    has = mask.any(1)
    torch.testing.assert_close(v[has, 0], rv[has])
    assert torch.equal(i[has, 0], ri[has])
    assert torch.all(i[~has] == -1)


def test_numpy_ranges_and_batch():
    x, y, b, ranges, mask, keep = clustered_problem()
    g = NpGenred("Exp(-SqDist(x,y))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    c = g(
        x.cpu().numpy(),
        y.cpu().numpy(),
        b.cpu().numpy(),
        ranges=tuple(t.cpu().numpy() for t in ranges),
    )
    K = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask
    np.testing.assert_allclose(c, (K @ b).cpu().numpy(), rtol=1e-12, atol=1e-14)
    xb = np.random.rand(2, 10, 2)
    yb = np.random.rand(2, 12, 2)
    bb = np.random.rand(2, 12, 1)
    cb = g(xb, yb, bb)
    Kb = np.exp(-((xb[:, :, None] - yb[:, None]) ** 2).sum(-1))
    np.testing.assert_allclose(cb, Kb @ bb, rtol=1e-12)
