"""LazyTensor reductions (every method, both axes, batch dimensions, ranges, K @ v, K.t(),
options), symbolic variables, memoisation, errors, solve / KernelSolve and the generic_*
helpers, torch and numpy, against dense float64 torch."""

import numpy as np
import pytest
import torch

import tvmred.ops
from tvmred import lazynodes
from tvmred.numpy import KernelSolve as NpKernelSolve
from tvmred.numpy import LazyTensor as NpLazyTensor
from tvmred.numpy import generic_sum as np_generic_sum
from tvmred.torch import (
    KernelSolve,
    LazyTensor,
    Pm,
    Vi,
    Vj,
    generic_argkmin,
    generic_argmin,
    generic_logsumexp,
    generic_sum,
)
from tvmred.torch.cluster import (
    cluster_ranges_centroids,
    from_matrix,
    grid_cluster,
    sort_clusters,
    swap_axes,
)

M, N, K = 11, 13, 3
F64 = torch.float64


def data(M=M, N=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(M, 2, generator=g, dtype=F64), torch.rand(N, 2, generator=g, dtype=F64)


def vec_lazy(x, y, cls=LazyTensor):
    """A 2-vector formula F_ij = (|x_i - y_j|^2, x_i0 * y_j1 - y_j0)."""
    x_i, y_j = cls(x[:, None, :]), cls(y[None, :, :])
    return x_i.sqdist(y_j).concat(x_i[0] * y_j[1] - y_j[0])


def vec_dense(x, y):
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1, keepdim=True)
    return torch.cat([d2, x[:, None, :1] * y[None, :, 1:] - y[None, :, :1]], -1)


def reduce_dense(red, F, axis, w=None):
    """Dense reference: ``F`` (M, N, D) reduced over ``axis``."""
    if red == "sum":
        return F.sum(axis)
    if red in ("min", "max", "argmin", "argmax", "min_argmin", "max_argmax"):
        v, i = (torch.min if "min" in red else torch.max)(F, axis)
        return {"min": v, "max": v, "argmin": i, "argmax": i}.get(red, (v, i))
    if red in ("Kmin", "argKmin", "Kmin_argKmin"):
        v, i = F.topk(K, dim=axis, largest=False)
        v, i = v.movedim(axis, -2), i.movedim(axis, -2)  # (rows, K, D)
        return {"Kmin": v, "argKmin": i}.get(red, (v, i))
    f = -F[..., 0]
    if red == "logsumexp":
        return torch.logsumexp(f, axis)[..., None]
    if red == "logsumexp_weight":
        return torch.log((f.exp()[..., None] * w).sum(axis))
    return (torch.softmax(f, axis)[..., None] * w).sum(axis)  # sumsoftmaxweight


def reduce_lazy(red, F, axis, w=None):
    if red in ("Kmin", "argKmin", "Kmin_argKmin"):
        return getattr(F, red)(K, axis=axis)
    if red in ("logsumexp", "logsumexp_weight"):
        return (-F[0]).logsumexp(axis, weight=w)
    if red == "sumsoftmaxweight":
        return (-F[0]).sumsoftmaxweight(w, axis=axis)
    return getattr(F, red)(dim=axis)


REDS = ["sum", "min", "max", "argmin", "argmax", "min_argmin", "max_argmax"]
REDS += ["Kmin", "argKmin", "Kmin_argKmin", "logsumexp", "logsumexp_weight", "sumsoftmaxweight"]
WEIGHTED = ("sumsoftmaxweight", "logsumexp_weight")


def check(got, want, tol=1e-10):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            check(g, w, tol)
        return
    got = torch.as_tensor(got)
    if got.shape != want.shape:  # pykeops squeezes a K-min of a scalar formula
        want = want.squeeze(-1)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype == torch.int64:
        assert got.dtype == torch.int64 and torch.equal(got, want)
    else:
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", REDS)
def test_reductions_values_and_gradients(red, axis):
    x, y = (t.requires_grad_() for t in data())
    r = y if axis == 1 else x  # a weight is indexed by the reduced index
    w = torch.cat([r, r[:, :1] ** 2], 1)  # (n, 3)
    w = w[None] if axis == 1 else w[:, None]
    wl = LazyTensor(w) if red in WEIGHTED else None
    got = reduce_lazy(red, vec_lazy(x, y), axis, wl)
    want = reduce_dense(red, vec_dense(x, y), axis, w)
    check(got, want)
    g0 = got[0] if isinstance(got, tuple) else got
    w0 = want[0] if isinstance(want, tuple) else want
    if not g0.is_floating_point():
        assert not g0.requires_grad
        return
    e = torch.randn_like(w0)
    got_g = torch.autograd.grad(g0, (x, y), e.reshape(g0.shape), retain_graph=True)
    for a, b in zip(got_g, torch.autograd.grad(w0, (x, y), e)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("red", ["sum", "argmin", "min_argmin", "Kmin_argKmin", "logsumexp_weight"])
def test_reductions_numpy(red):
    x, y = data()
    w = torch.cat([y, y[:, :1] ** 2], 1)[None]
    wl = NpLazyTensor(w.numpy()) if red in WEIGHTED else None
    for axis in (1,) if red in WEIGHTED else (1, 0):
        got = reduce_lazy(red, vec_lazy(x.numpy(), y.numpy(), NpLazyTensor), axis, wl)
        got = tuple(torch.from_numpy(g) for g in got) if isinstance(got, tuple) else got
        check(got, reduce_dense(red, vec_dense(x, y), axis, w))


def test_matmul_transpose_and_aliases():
    x, y = data()
    v1, v2, u = torch.rand(N, dtype=F64), torch.rand(N, 4, dtype=F64), torch.rand(M, 2, dtype=F64)
    Kxy = (-Vi(x).sqdist(Vj(y))).exp()
    dense = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1))
    torch.testing.assert_close(Kxy @ v1, dense @ v1)
    torch.testing.assert_close(Kxy @ v2, dense @ v2)
    torch.testing.assert_close(Kxy.matvec(v2), dense @ v2)
    torch.testing.assert_close(Kxy.T @ u, dense.T @ u)
    torch.testing.assert_close(Kxy.rmatvec(u), dense.T @ u)
    assert Kxy.shape == (M, N) and Kxy.t().shape == (N, M) and Kxy.dim() == 3
    with pytest.raises(ValueError, match="last dimension 1"):
        Vi(x) @ v1


def test_batch_dimensions_with_broadcasting():
    B1, B2 = 2, 3
    x = torch.rand(B1, B2, M, 1, 2, dtype=F64, requires_grad=True)
    y = torch.rand(1, B2, 1, N, 2, dtype=F64, requires_grad=True)  # broadcast over B1
    s = torch.rand(B1, 1, 1, 1, 1, dtype=F64, requires_grad=True)  # a parameter per B1
    b = torch.rand(1, N, 1, dtype=F64, requires_grad=True)  # no batch dims at all
    Kb = (-LazyTensor(x).sqdist(LazyTensor(y)) * LazyTensor(s)).exp() * LazyTensor(b)
    assert Kb.shape == (B1, B2, M, N) and Kb.nbatchdims == 2
    d = torch.exp(-((x - y) ** 2).sum(-1, keepdim=True) * s) * b
    for axis in (2, 3):
        got, want = Kb.sum(axis), d.sum(axis)
        torch.testing.assert_close(got, want)
        e = torch.randn_like(want)
        for a, w in zip(
            torch.autograd.grad(got, (x, y, s, b), e),
            torch.autograd.grad(want, (x, y, s, b), e, retain_graph=True),
        ):
            torch.testing.assert_close(a, w)
    torch.testing.assert_close(Kb.logsumexp(3), torch.logsumexp(d, 3))
    torch.testing.assert_close(Kb.argmin(2), d.argmin(2))
    with pytest.raises(ValueError, match="batch dimensions \\+ 0 or 1"):
        Kb.sum(1)


def test_ranges_block_sparse():
    x, y = data(60, 70)
    (x,), lx = sort_clusters((x,), grid_cluster(x, 0.3))
    (y,), ly = sort_clusters((y,), grid_cluster(y, 0.3))
    rx, cx, _ = cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < 0.15
    ranges = from_matrix(rx, ry, keep)
    mask = keep[lx][:, ly]
    Kxy = (-Vi(x).sqdist(Vj(y)) * 4).exp()
    dense = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * 4) * mask
    v = torch.rand(70, 1, dtype=F64)
    torch.testing.assert_close((Kxy * Vj(v)).sum(1, ranges=ranges), dense @ v)
    Kxy.ranges = ranges  # the attribute, as geomloss sets it
    torch.testing.assert_close(Kxy @ v, dense @ v)
    u = torch.rand(60, 1, dtype=F64)
    torch.testing.assert_close(Kxy.t() @ u, dense.T @ u)  # t() swaps the ranges
    assert swap_axes(ranges)[0] is ranges[3] and swap_axes(None) is None
    assert 0 < mask.double().mean() < 1


def test_options_backend_out_and_accumulators():
    x, y = (t.float() for t in data())
    Kxy = (-Vi(x).sqdist(Vj(y))).exp()
    want = torch.exp(-((x[:, None].double() - y[None].double()) ** 2).sum(-1)).sum(1, keepdim=True)
    for kw in ({"dtype_acc": "float64"}, {"use_double_acc": True}, {"sum_scheme": "kahan_scheme"}):
        torch.testing.assert_close(Kxy.sum(1, **kw).double(), want, rtol=1e-6, atol=1e-6)
    out = torch.empty(M, 1)
    assert Kxy.sum(1, backend="CPU", out=out) is out
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        Kxy.sum(1, bogus=1)


def test_symbolic_variables_and_callable_reductions():
    x, y = data()
    b = torch.rand(N, 1, dtype=F64)
    gauss = (-Vi(0, 2).sqdist(Vj(1, 2))).exp() * Vj(2, 1)
    routine = gauss.sum(axis=1)  # symbolic variables: a callable
    dense = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    torch.testing.assert_close(routine(x, y, b), dense)
    p = Pm(torch.tensor([2.0], dtype=F64))
    mixed = ((-Vi(0, 2).sqdist(Vj(y))) * p).exp().sum(1, call=False)  # data after symbols
    torch.testing.assert_close(
        mixed(x), torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * 2).sum(1, keepdim=True)
    )
    with pytest.raises(ValueError, match="takes 3 argument"):
        routine(x, y)
    with pytest.raises(ValueError, match="not \\[1\\]"):
        (Vi(0, 2) + Vj(2, 2)).sum(1)(x, y)


def test_training_loop_builds_no_formula_after_the_first_call(monkeypatch):
    """The second iteration builds no node, makes no new Reduction and compiles nothing."""

    def step():
        x, y = (t.requires_grad_() for t in data())
        loss = ((-LazyTensor(x[:, None]).sqdist(LazyTensor(y[None]))).exp()).sum(1).sum()
        loss.backward()
        return x.grad

    first = step()
    made, reds = [], len(lazynodes._MEMO)
    real = tvmred.ops.make
    monkeypatch.setattr(tvmred.ops, "make", lambda *a, **k: made.append(a) or real(*a, **k))
    monkeypatch.setattr(lazynodes, "make", tvmred.ops.make)
    torch.testing.assert_close(step(), first)
    assert made == [] and len(lazynodes._MEMO) == reds


def test_construction_and_errors():
    x, y = data()
    assert Vi(x).ni == M and Vj(y).nj == N and Pm(torch.rand(3)).ndim == 3
    assert LazyTensor(x[:, None]).shape == (M, 1, 2) and LazyTensor(0.5).ndim == 1
    assert LazyTensor(torch.rand(4, M, 1, 2)).batchdims == (4,)
    assert "Var(0,2,0)" in repr(Vi(x) + 1)
    with pytest.raises(ValueError, match="explicit axis"):
        LazyTensor(x)
    with pytest.raises(ValueError, match="must not be given"):
        LazyTensor(x[:, None], axis=0)
    with pytest.raises(ValueError, match="shape"):
        LazyTensor(torch.rand(3, 4, 2))
    assert LazyTensor(torch.rand(3, 1, 2, dtype=torch.complex64)).is_complex
    with pytest.raises(TypeError, match="dtype torch.int32 is not supported"):
        LazyTensor(torch.ones(3, 1, 2, dtype=torch.int32))
    with pytest.raises(TypeError, match="LazyTensors are built from"):
        LazyTensor("x")
    with pytest.raises(ValueError, match="incompatible values for attribute ni"):
        Vi(x) + Vi(torch.rand(M + 1, 2, dtype=F64))
    with pytest.raises(ValueError, match="incompatible values for attribute _dtype"):
        Vi(x) + Vj(y.float())
    with pytest.raises(ValueError, match="not compatible"):
        Vi(x) + Vj(torch.rand(N, 3, dtype=F64))
    with pytest.raises(ValueError, match="incompatible batch dimensions"):
        LazyTensor(torch.rand(2, M, 1, 2)) + LazyTensor(torch.rand(3, 1, N, 2))
    with pytest.raises(ValueError, match="axis \\(or dim\\)"):
        Vi(x).sqdist(Vj(y)).sum_reduction()
    with pytest.raises(ValueError, match="not in \\[0, 2\\)"):
        Vi(x)[5]
    with pytest.raises(ValueError, match="needs a scalar formula"):
        Vi(x).logsumexp(1)
    with pytest.raises(ValueError, match="opt_arg=K"):
        Vi(x).Kmin(0, dim=1)


def test_solve_and_kernel_solve():
    x, b = data(40, 40)[0].requires_grad_(), torch.rand(40, 3, dtype=F64, requires_grad=True)
    s = torch.tensor([3.0], dtype=F64, requires_grad=True)
    dense = torch.exp(-((x[:, None] - x[None]) ** 2).sum(-1) * s) + 0.3 * torch.eye(40, dtype=F64)
    want = torch.linalg.solve(dense, b)
    Kxx = (-LazyTensor(x[:, None]).sqdist(LazyTensor(x[None])) * s).exp()
    got = Kxx.solve(b, alpha=0.3, eps=1e-12)
    solver = KernelSolve(
        "Exp(-SqDist(x,y)*s)*a", ["x=Vi(2)", "y=Vj(2)", "a=Vj(3)", "s=Pm(1)"], "a", axis=1
    )
    got2 = solver(x, x, b, s, alpha=0.3, eps=1e-12)
    for g in (got, got2):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-9)
        e = torch.randn_like(want)
        for a, w in zip(
            torch.autograd.grad(g, (x, b, s), e, retain_graph=True),
            torch.autograd.grad(want, (x, b, s), e, retain_graph=True),
        ):
            torch.testing.assert_close(a, w, rtol=1e-8, atol=1e-8)
    xn, bn = x.detach().numpy(), b.detach().numpy()
    Kn = (-NpLazyTensor(xn[:, None]).sqdist(NpLazyTensor(xn[None])) * 3.0).exp()
    np.testing.assert_allclose(
        Kn.solve(bn, alpha=0.3, eps=1e-12), want.detach().numpy(), rtol=1e-9, atol=1e-9
    )
    npsolver = NpKernelSolve(
        "Exp(-SqDist(x,y)*3.0)*a", ["x=Vi(2)", "y=Vj(2)", "a=Vj(3)"], "a", axis=1
    )
    np.testing.assert_allclose(
        npsolver(xn, xn, bn, alpha=0.3, eps=1e-12), want.detach().numpy(), rtol=1e-9, atol=1e-9
    )
    with pytest.raises(ValueError, match="indexed by the reduced index"):
        KernelSolve("Exp(-SqDist(x,y))*a", ["x=Vi(2)", "y=Vj(2)", "a=Vj(3)"], "x", axis=1)


def test_generic_helpers():
    x, y = data()
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    al = ("x = Vi(2)", "y = Vj(2)")
    torch.testing.assert_close(
        generic_sum("Exp(-SqDist(x,y))", "a = Vi(1)", *al)(x, y),
        d2.neg().exp().sum(1, keepdim=True),
    )
    torch.testing.assert_close(
        generic_sum("Exp(-SqDist(x,y))", "b = Vj(1)", *al)(x, y), d2.neg().exp().sum(0)[:, None]
    )
    torch.testing.assert_close(
        generic_logsumexp("-SqDist(x,y)", "a = Vi(1)", *al)(x, y),
        torch.logsumexp(-d2, 1, keepdim=True),
    )
    assert torch.equal(generic_argmin("SqDist(x,y)", "a = Vi(1)", *al)(x, y)[:, 0], d2.argmin(1))
    assert torch.equal(
        generic_argkmin("SqDist(x,y)", "a = Vi(3)", *al)(x, y), d2.topk(3, 1, largest=False).indices
    )
    got = np_generic_sum("Exp(-SqDist(x,y))", "a = Vi(1)", *al)(x.numpy(), y.numpy())
    np.testing.assert_allclose(got, d2.neg().exp().sum(1, keepdim=True).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="Vi\\(...\\) or Vj"):
        generic_sum("x", "a = Pm(1)", "x = Pm(1)")
