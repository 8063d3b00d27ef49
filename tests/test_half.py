"""float16 and bfloat16 on the CPU: every reduction kind, both axes, against dense float64
references computed from the same half-rounded inputs.  The kernels load half values,
evaluate and accumulate in float32 and round the result once, so the stated bound is that of
one rounding: |out - ref| <= u |ref| + (float32's own error), u = 2^-11 (float16) or 2^-8
(bfloat16).  Gradients whose backward reads the forward's (rounded) output -- LogSumExp,
SumSoftMaxWeight -- carry that rounding too: u (2 + |out|)."""

import numpy as np
import pytest
import torch
from test_reductions import ALL, DIFFERENTIABLE, data, dense, routine

from tvmred.torch import Genred, LazyTensor

HALF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
F32 = 2e-5  # float32's error on these sizes, relative to a column's largest value


def half_data(dtype):
    return [t.to(dtype) for t in data()]


def close(got, want, u, extra=0.0, absolute=0.0):
    """|got - want| <= u |want| + (F32 + extra) * (the column's largest |want|) + absolute."""
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            close(g, w, u, extra, absolute)
        return
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype == torch.int64:
        assert got.dtype == torch.int64 and torch.equal(got, want)
        return
    scale = want.abs().amax(dim=0, keepdim=True)
    err = (got.double() - want).abs()
    bound = u * want.abs() + (F32 + extra) * scale + absolute
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("dtype", list(HALF), ids=str)
@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", ALL)
def test_values(red, axis, dtype):
    x, y, b = half_data(dtype)
    out = routine(red, axis)(x, y, b)
    for o in out if isinstance(out, tuple) else (out,):
        assert o.dtype in (dtype, torch.int64), o.dtype  # results in the data's dtype
    close(out, dense(red, x, y, b, axis), HALF[dtype])


@pytest.mark.parametrize("dtype", list(HALF), ids=str)
@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_gradients(red, dtype):
    u = HALF[dtype]
    ts = [t.requires_grad_() for t in half_data(dtype)]
    out = routine(red, 1)(*ts)
    out = out[0] if isinstance(out, tuple) else out
    refs = [t.detach().double().requires_grad_() for t in ts]
    want = dense(red, *refs, 1)
    want = want[0] if isinstance(want, tuple) else want
    e = torch.randn(want.shape, dtype=torch.float64).to(dtype)
    got_g = torch.autograd.grad(out, ts, e, allow_unused=True)
    want_g = torch.autograd.grad(want, refs, e.double(), allow_unused=True)
    for g, w, t in zip(got_g, want_g, ts):
        g = torch.zeros_like(t) if g is None else g
        w = torch.zeros_like(t, dtype=torch.float64) if w is None else w
        assert g.dtype == dtype
        # the backward of the LogSumExp family reads the forward's rounded output: an
        # absolute error up to u (1 + |out|) |dF| |e| more (|dF| <= 2 |x - y| <= 4 here)
        extra = u * (1 + want.abs().max().item()) * 4 * e.abs().max().item()
        close(g, w, u, 0.0, extra if ("Soft" in red or "LogSum" in red) else 0.0)


@pytest.mark.parametrize("dtype", list(HALF), ids=str)
def test_indices_are_exact_and_ties_go_as_torchs(dtype):
    """Integer-valued half data: distances are exact in float32, ties everywhere; the indices
    are torch's (lowest index first) and int64."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (50, 2), generator=g).to(dtype)
    y = torch.randint(-3, 4, (3000, 2), generator=g).to(dtype)  # past 2^11 rows
    d = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
    am = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="ArgMin", axis=1)(x, y)
    assert am.dtype == torch.int64
    assert torch.equal(am[:, 0], d.argmin(1))
    ak = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="ArgKMin", opt_arg=5,
                axis=1)(x, y)  # fmt: skip
    assert torch.equal(ak, torch.sort(d, dim=1, stable=True).indices[:, :5])


@pytest.mark.parametrize("dtype", list(HALF), ids=str)
def test_keops_float16_test_on_the_cpu(dtype):
    """The computation of KeOps' test_float16.py (a LazyTensor sum, its gradient), on CPU
    tensors in float16 and bfloat16, within its tolerances against torch."""
    torch.manual_seed(0)
    x = torch.randn(5, 1, 1, dtype=dtype, requires_grad=True)
    y = torch.randn(1, 5, 1, dtype=dtype)

    def fun(x, y, lazy):
        if lazy:
            x, y = LazyTensor(x), LazyTensor(y)
        return (x - y).sum(dim=2).sum(dim=0)

    out = [fun(x, y, lazy).squeeze() for lazy in (False, True)]
    # torch rounds each bfloat16 step, tvmred once (the float64 check below): one bfloat16
    # ulp apart at most; float16 within the test's own tolerance
    tol = 0.001 if dtype == torch.float16 else 2.0**-7
    assert torch.allclose(out[0], out[1], atol=tol, rtol=tol)
    exact = fun(x.double(), y.double(), False).squeeze()
    assert ((out[1].double() - exact).abs() <= HALF[dtype] * exact.abs() + 1e-6).all()
    grads = [torch.autograd.grad(o[0], [x])[0] for o in out]
    assert torch.allclose(grads[0], grads[1])


def test_numpy_float16():
    import tvmred.numpy as tn

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 3)).astype(np.float16), rng.random((60, 3)).astype(np.float16)
    b = rng.random((60, 2)).astype(np.float16)
    out = tn.Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)(x, y, b)
    assert out.dtype == np.float16
    x64, y64, b64 = (a.astype(np.float64) for a in (x, y, b))
    ref = np.exp(-((x64[:, None] - y64[None]) ** 2).sum(-1)) @ b64
    assert (np.abs(out - ref) <= 2.0**-11 * np.abs(ref) + F32 * np.abs(ref).max()).all()


def test_half_accumulator_is_refused_clearly():
    with pytest.raises(ValueError, match="accumulated in float32"):
        Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], axis=1, dtype_acc="float16")


def test_autocast_keeps_the_inputs_dtype():
    """Under torch.autocast a reduction is computed in its inputs' dtype (no cast in, no
    silent upcast of the output), as torch's own reductions."""
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    for dtype in (torch.float32, torch.bfloat16):
        x, y, b = (t.to(dtype) for t in data())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = g(x, y, b)
        assert out.dtype == dtype
        x64, y64, b64 = (t.double() for t in (x, y, b))
        ref = torch.exp(-((x64[:, None] - y64[None]) ** 2).sum(-1)) @ b64
        close(out, ref, HALF.get(dtype, 0.0))


@pytest.mark.parametrize("dtype", list(HALF), ids=str)
def test_batch_dims_ranges_and_split_j(dtype):
    from test_batch_ranges import clustered_problem

    u = HALF[dtype]
    g = Genred("Exp(-SqDist(x,y)*IntCst(4))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)

    def gauss(x, y, b, mask=None):
        x, y, b = (t.double() for t in (x, y, b))
        K = torch.exp(-4 * ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1))
        return (K if mask is None else K * mask) @ b

    # batch dimensions
    xb, yb, bb = torch.rand(2, 30, 2), torch.rand(2, 40, 2), torch.rand(2, 40, 1)
    xb, yb, bb = (t.to(dtype) for t in (xb, yb, bb))
    out = g(xb, yb, bb)
    assert out.dtype == dtype
    close(out, gauss(xb, yb, bb), u)
    # block-sparse ranges
    x, y, b, ranges, mask, _ = clustered_problem(dtype=torch.float32)
    x, y, b = (t.to(dtype) for t in (x, y, b))
    close(g(x, y, b, ranges=ranges), gauss(x, y, b, mask), u)
    # few output rows, many reduced ones: the split-j kernel and the float32 combine
    xs, ys, bs = (torch.rand(8, 2).to(dtype), torch.rand(20000, 2).to(dtype),
                  torch.rand(20000, 1).to(dtype))  # fmt: skip
    close(g(xs, ys, bs), gauss(xs, ys, bs), u)
