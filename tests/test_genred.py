"""Genred (torch and numpy): the reference example, gradients of every order, both axes,
arguments handling, and bad inputs — against dense float64 torch computations."""

import numpy as np
import pytest
import torch

import tvmred
from tvmred.numpy import Genred as NpGenred
from tvmred.torch import Genred

FORMULA = "Square(p-a)*Exp(x+y)"
ALIASES = ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "p = Pm(1)"]


def reference_inputs(M, N, dtype):
    x = torch.rand(M, 3, dtype=dtype)
    y = torch.rand(N, 3, dtype=dtype)
    a = torch.rand(N, 1, dtype=dtype)
    p = torch.rand(1, dtype=dtype)
    return x, y, a, p


def dense(x, y, a, p, axis=1):
    x, y, a, p = (t.double() if t.dtype != torch.float64 else t for t in (x, y, a, p))
    k = ((p - a.T) ** 2)[..., None] * torch.exp(x[:, None, :] + y[None, :, :])
    return k.sum(axis)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_reference_example_full_size(dtype, tol):
    x, y, a, p = reference_inputs(3000, 5000, dtype)
    y.requires_grad_()
    c = Genred(FORMULA, ALIASES, reduction_op="Sum", axis=1)(x, y, a, p)
    assert c.shape == (3000, 3) and c.dtype == dtype
    e = torch.rand_like(c)
    (g,) = torch.autograd.grad(c, y, e)
    yd = y.detach().double().requires_grad_()
    ref = dense(x, yd, a, p)
    (gref,) = torch.autograd.grad(ref, yd, e.double())
    assert rel(c, ref) < tol
    assert rel(g, gref) < tol


@pytest.mark.parametrize("axis", [0, 1])
def test_all_gradients_both_axes(axis):
    ts = [t.requires_grad_() for t in reference_inputs(70, 90, torch.float64)]
    c = Genred(FORMULA, ALIASES, axis=axis)(*ts)
    e = torch.randn_like(c)
    got = torch.autograd.grad(c, ts, e)
    refs = [t.detach().clone().requires_grad_() for t in ts]
    want = torch.autograd.grad(dense(*refs, axis=axis), refs, e)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel(g, w) < 1e-12


def test_second_and_third_order():
    ts = [t.requires_grad_() for t in reference_inputs(40, 60, torch.float64)]
    refs = [t.detach().clone().requires_grad_() for t in ts]
    c = Genred(FORMULA, ALIASES, axis=1)(*ts)
    cr = dense(*refs)
    e = torch.randn_like(c)
    (gy,) = torch.autograd.grad(c, ts[1], e, create_graph=True)
    (gyr,) = torch.autograd.grad(cr, refs[1], e, create_graph=True)
    h = torch.randn_like(gy)
    second = torch.autograd.grad(gy, ts, h, create_graph=True)
    second_r = torch.autograd.grad(gyr, refs, h, create_graph=True)
    for s, sr in zip(second, second_r):
        assert rel(s, sr) < 1e-12
    third = torch.autograd.grad((second[0] ** 2).sum(), ts[3])[0]
    third_r = torch.autograd.grad((second_r[0] ** 2).sum(), refs[3])[0]
    assert rel(third, third_r) < 1e-11


def test_gaussian_kernel_gradcheck():
    x = torch.rand(20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(30, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    assert torch.autograd.gradcheck(g, (x, y, b))
    assert torch.autograd.gradgradcheck(g, (x, y, b))


def test_noncontiguous_and_positions():
    # positions given explicitly and out of order; arguments passed by position
    g = Genred("Exp(-SqDist(x,y))*b", ["b = Vj(2, 2)", "y = Vj(1, 3)", "x = Vi(0, 3)"], axis=1)
    x = torch.rand(3, 50, dtype=torch.float64).T  # non-contiguous
    y = torch.rand(40, 5, dtype=torch.float64)[:, 1:4]  # non-contiguous
    b = torch.rand(40, 2, dtype=torch.float64)
    ref = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    assert rel(g(x, y, b), ref) < 1e-13


def test_misaligned_views_and_numpy_arrays():
    """Contiguous views at odd offsets (and numpy arrays, 16-byte aligned) must not reach the
    kernel as they are: TVM's SIMD loads assume 64-byte alignment."""
    base = torch.rand(1000 * 3 + 1, dtype=torch.float32)
    x = base[1:].view(1000, 3)  # contiguous, but 4 bytes past an aligned address
    y = torch.rand(700, 3)[1:]
    assert x.is_contiguous() and x.data_ptr() % 64 != 0
    g = Genred("Exp(-SqDist(x,y))*Elem(y,0)", ["x = Vi(3)", "y = Vj(3)"], axis=1)
    ref = torch.exp(-((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)) @ y.double()[:, :1]
    torch.testing.assert_close(g(x, y).double(), ref, rtol=1e-5, atol=1e-5)
    xn = np.zeros(3 * 1000 + 1, dtype=np.float32)[1:].reshape(1000, 3)
    xn[:] = x.cpu().numpy()
    c = NpGenred("Exp(-SqDist(x,y))*Elem(y,0)", ["x = Vi(3)", "y = Vj(3)"], axis=1)(
        xn, y.cpu().numpy()
    )
    np.testing.assert_allclose(c, ref.cpu().numpy(), rtol=1e-5, atol=1e-5)


def test_sizes_not_multiple_of_block_and_tiny():
    g = Genred("(x|y)*b", ["x = Vi(4)", "y = Vj(4)", "b = Vj(1)"], axis=1)
    for M, N in [(1, 1), (17, 3), (33, 1000), (0, 5), (5, 0)]:
        x = torch.rand(M, 4, dtype=torch.float64)
        y = torch.rand(N, 4, dtype=torch.float64)
        b = torch.rand(N, 1, dtype=torch.float64)
        c = g(x, y, b)
        assert c.shape == (M, 1)
        torch.testing.assert_close(c, (x @ y.T) @ b)


def test_missing_index_category_gives_size_one():
    # no j-variable: N = 1 (as pykeops); no i-variable with axis=1: M = 1
    x = torch.rand(10, 3, dtype=torch.float64)
    torch.testing.assert_close(Genred("Exp(x)", ["x = Vi(3)"], axis=1)(x), torch.exp(x))
    y = torch.rand(10, 3, dtype=torch.float64)
    c = Genred("Exp(y)", ["y = Vj(3)"], axis=1)(y)
    torch.testing.assert_close(c, torch.exp(y).sum(0, keepdim=True))


def test_dtype_acc_float64_for_float32_data():
    x = torch.rand(10, 1)
    y = torch.ones(200_000, 1) * 1e-4
    c32 = Genred("x*0+y", ["x = Vi(1)", "y = Vj(1)"], axis=1)(x, y)
    c64 = Genred("x*0+y", ["x = Vi(1)", "y = Vj(1)"], axis=1, dtype_acc="float64")(x, y)
    exact = y.double().sum().item()
    assert c64.dtype == torch.float32
    assert abs(c64[0, 0].item() - exact) / exact < 1e-6
    assert abs(c64[0, 0].item() - exact) <= abs(c32[0, 0].item() - exact)


def test_out_argument():
    x, y, a, p = reference_inputs(50, 60, torch.float64)
    out = torch.empty(50, 3, dtype=torch.float64)
    r = Genred(FORMULA, ALIASES, axis=1)(x, y, a, p, out=out)
    assert r is out
    assert rel(out, dense(x, y, a, p)) < 1e-13
    with pytest.raises(ValueError, match="out must be"):
        Genred(FORMULA, ALIASES, axis=1)(x, y, a, p, out=torch.empty(3, 3, dtype=torch.float64))


def test_numpy_binding():
    x, y, a, p = (t.cpu().numpy() for t in reference_inputs(64, 80, torch.float64))
    c = NpGenred(FORMULA, ALIASES, reduction_op="Sum", axis=1)(x, y, a, p)
    assert isinstance(c, np.ndarray) and c.shape == (64, 3)
    ref = dense(*(torch.from_numpy(t) for t in (x, y, a, p))).cpu().numpy()
    np.testing.assert_allclose(c, ref, rtol=1e-12)
    c0 = NpGenred(FORMULA, ALIASES, axis=0)(x, y, a, p)
    ref0 = dense(*(torch.from_numpy(t) for t in (x, y, a, p)), axis=0).cpu().numpy()
    np.testing.assert_allclose(c0, ref0, rtol=1e-12)
    x32 = x.astype(np.float32)
    c32 = NpGenred(FORMULA, ALIASES, axis=1)(x32, *(t.astype(np.float32) for t in (y, a, p)))
    assert c32.dtype == np.float32
    np.testing.assert_allclose(c32, ref, rtol=1e-5)
    with pytest.raises(TypeError, match="dtype int64"):
        NpGenred(FORMULA, ALIASES, axis=1)(x.astype(np.int64), y, a, p)


def test_grad_and_diff_inside_formulas():
    al = ["x = Vi(3)", "y = Vj(3)", "e = Vi(1)", "v = Vi(3)"]
    x, y = torch.rand(30, 3, dtype=torch.float64), torch.rand(40, 3, dtype=torch.float64)
    e, v = torch.rand(30, 1, dtype=torch.float64), torch.rand(30, 3, dtype=torch.float64)
    c = Genred("Grad(Exp(-SqDist(x,y)), x, e)", al, axis=1)(x, y, e, v)
    xr = x.clone().requires_grad_()
    k = torch.exp(-((xr[:, None] - y[None]) ** 2).sum(-1, keepdim=True))  # (M, N, 1)
    (gref,) = torch.autograd.grad(k, xr, e[:, None, :].expand_as(k))
    assert rel(c, gref) < 1e-13
    d = Genred("Diff(Exp(-SqDist(x,y)), x, v)", al, axis=1)(x, y, e, v)
    _, jvp = torch.func.jvp(
        lambda xx: torch.exp(-((xx[:, None] - y[None]) ** 2).sum(-1, keepdim=True)).sum(1),
        (x,),
        (v,),
    )
    assert rel(d, jvp) < 1e-13


def test_forward_mode_ad_with_dual_tensors():
    """torch.autograd.forward_ad's dual tensors do not require grad: the call still goes
    through the autograd Function (its jvp), not the no-grad fast path."""
    import torch.autograd.forward_ad as fwAD

    x, y = torch.rand(30, 3, dtype=torch.float64), torch.rand(40, 3, dtype=torch.float64)
    b, t = torch.rand(40, 1, dtype=torch.float64), torch.rand(30, 3, dtype=torch.float64)
    f = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"], axis=1)

    def dense(xx):
        return torch.exp(-((xx[:, None] - y[None]) ** 2).sum(-1)) @ b

    want, want_t = torch.func.jvp(dense, (x,), (t,))
    with fwAD.dual_level():
        out = f(fwAD.make_dual(x, t), y, b)
        got, got_t = fwAD.unpack_dual(out)
    assert rel(got, want) < 1e-13 and got_t is not None and rel(got_t, want_t) < 1e-13
    plain = f(x, y, b)  # no grad anywhere: the kernel alone, the same values
    assert rel(plain, want) < 1e-13 and plain.grad_fn is None


# ------------------------------------------------------------------------- bad inputs


@pytest.fixture
def routine():
    return Genred(FORMULA, ALIASES, axis=1)


def test_wrong_number_of_arguments(routine):
    x, y, a, p = reference_inputs(5, 6, torch.float32)
    with pytest.raises(ValueError, match=r"takes 4 arguments \(x, y, a, p\), got 3"):
        routine(x, y, a)


def test_wrong_last_dimension(routine):
    x, y, a, p = reference_inputs(5, 6, torch.float32)
    with pytest.raises(
        ValueError, match=r"'y' \(argument 1, declared Vj\(3\)\) has shape \(6, 4\)"
    ):
        routine(x, torch.rand(6, 4), a, p)
    with pytest.raises(ValueError, match="'p'"):
        routine(x, y, a, torch.rand(2))


def test_mixed_dtypes(routine):
    x, y, a, p = reference_inputs(5, 6, torch.float32)
    with pytest.raises(TypeError, match="same dtype.*y: torch.float64"):
        routine(x, y.double(), a, p)
    with pytest.raises(TypeError, match="'x'.*dtype torch.int64"):
        routine(x.long(), y, a, p)
    with pytest.raises(TypeError, match="must be a tensor"):
        routine(x, y, a, 1.0)


def test_mixed_devices(routine):
    x, y, a, p = reference_inputs(5, 6, torch.float32)
    with pytest.raises(ValueError, match="same device.*meta"):
        routine(x, y.to("meta"), a, p)


def test_inconsistent_sizes(routine):
    x, y, a, p = reference_inputs(5, 6, torch.float32)
    with pytest.raises(ValueError, match=r"inconsistent N: .*'y'.* has 6 rows but .*'a'.* has 7"):
        routine(x, y, torch.rand(7, 1), p)
    g = Genred("x+z", ["x = Vi(3)", "z = Vi(3)"], axis=1)
    with pytest.raises(ValueError, match="inconsistent M"):
        g(torch.rand(4, 3), torch.rand(5, 3))


def test_bad_formulas_fail_at_construction():
    with pytest.raises(tvmred.ParseError, match="unknown operation 'Foo'"):
        Genred("Foo(x)", ["x = Vi(3)"])
    with pytest.raises(tvmred.ParseError, match="Exp takes 1 argument"):
        Genred("Exp(x, x)", ["x = Vi(3)"])
    with pytest.raises(tvmred.ParseError, match="unknown variable 'q'"):
        Genred("x + q", ["x = Vi(3)"])
    with pytest.raises(tvmred.DimError, match=r"in 'x\+y'"):
        Genred("x+y", ["x = Vi(3)", "y = Vj(2)"])
    with pytest.raises(ValueError, match="position 0 already declared"):
        Genred("x", ["x = Vi(0, 3)", "y = Vj(0, 2)"])
    with pytest.raises(NotImplementedError, match="reduction_op='Median'"):
        Genred("x", ["x = Vi(3)"], reduction_op="Median")
    with pytest.raises(ValueError, match="axis"):
        Genred("x", ["x = Vi(3)"], axis=2)


def test_pickle_roundtrip():
    import pickle

    g = Genred(FORMULA, ALIASES, axis=1)
    h = pickle.loads(pickle.dumps(g))
    x, y, a, p = reference_inputs(20, 30, torch.float64)
    torch.testing.assert_close(h(x, y, a, p), dense(x, y, a, p))


def test_cuda_calls_launch_on_the_callers_stream(monkeypatch):
    """A kernel on CUDA tensors runs on torch's current stream there (TVM's environment
    stream set for the call, restored after).  Without a GPU: a CPU call whose array
    library reports a stream takes the same path (a CPU kernel ignores TVM's CUDA stream)."""
    from tvmred import arrays, cabi

    seen = []
    monkeypatch.setattr(arrays.Torch, "stream", staticmethod(lambda a: (0, 0xABC0)))
    before = cabi.get_stream(2, 0)
    g = Genred("x*y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    real = cabi.set_stream

    def spy(device_type, device_id, stream):
        seen.append((device_type, device_id, stream))
        return real(device_type, device_id, stream)

    monkeypatch.setattr(cabi, "set_stream", spy)
    x, y = torch.rand(5, 1), torch.rand(7, 1)
    torch.testing.assert_close(g(x, y), x * y.sum())
    assert seen[0] == (2, 0, 0xABC0) and seen[-1] == (2, 0, before)  # set, then restored
    assert cabi.get_stream(2, 0) == before
