"""Complex numbers: keopscore's complex operations in formulas (interleaved real layout) and
``ComplexLazyTensor`` for torch and numpy, values and gradients against torch's complex
arithmetic in complex128 (gradients in torch's convention: dL/dRe z + i dL/dIm z)."""

import math

import numpy as np
import pytest
import torch

import tvmred.numpy as tn
from tvmred.torch import ComplexLazyTensor, Genred, LazyTensor

C128 = torch.complex128


def as_real(z):
    return torch.view_as_real(z).flatten(-2)


def test_complex_formulas_in_genred():
    torch.manual_seed(0)
    x = torch.randn(20, 3, dtype=C128)
    y = torch.randn(30, 3, dtype=C128)
    g = Genred("ComplexMult(ComplexExp(x), Conj(y))", ["x = Vi(6)", "y = Vj(6)"], axis=1)
    out = torch.view_as_complex(g(as_real(x), as_real(y)).reshape(20, 3, 2))
    ref = (x.exp()[:, None] * y.conj()[None]).sum(1)
    torch.testing.assert_close(out, ref)
    g = Genred("ComplexAbs(ComplexDivide(x, y)) + ComplexAngle(y)", ["x = Vi(6)", "y = Vj(6)"],
               axis=1)  # fmt: skip
    ref = ((x[:, None] / y[None]).abs() + y.angle()[None]).sum(1)
    torch.testing.assert_close(g(as_real(x), as_real(y)), ref)


def fun(x, p, f, lazy):
    """KeOps' test_complex.py: a non-uniform discrete Fourier transform."""
    if lazy:
        x, p, f = LazyTensor(x), LazyTensor(p), LazyTensor(f)
    return (x * (-2 * math.pi * 1j * p * f).exp()).sum(dim=0)


def test_nudft_values_and_gradients_against_torch():
    torch.manual_seed(0)
    x = torch.rand(1, 50, 1, dtype=C128, requires_grad=True)
    p, f = torch.rand(1, 50, 1, dtype=torch.float64), torch.rand(40, 1, 1, dtype=torch.float64)
    assert isinstance(LazyTensor(x), ComplexLazyTensor) and LazyTensor(x).is_complex
    got, want = fun(x, p, f, True), fun(x, p, f, False)
    assert got.dtype == C128
    torch.testing.assert_close(got, want)
    loss = [(o.real**2 + o.imag**2).sum() for o in (got, want)]
    torch.testing.assert_close(
        torch.autograd.grad(loss[0], x)[0], torch.autograd.grad(loss[1], x)[0]
    )


def test_methods_and_mixed_arithmetic():
    torch.manual_seed(1)
    z = torch.randn(8, 1, 2, dtype=C128)
    w = torch.randn(1, 9, 2, dtype=C128)
    r = torch.rand(1, 9, 2, dtype=torch.float64) + 0.5
    Z, W, R = LazyTensor(z), LazyTensor(w), LazyTensor(r)
    cases = [
        (Z * W + R, z * w + r),
        (R - Z / W, r - z / w),
        (2.5 * Z.conj() - (1 + 2j) * W, 2.5 * z.conj() - (1 + 2j) * w),
        (-Z * (R * 1j), -z * (r * 1j)),
        ((Z * W).exp(), (z * w).exp()),
        (R.exp1j() + R.imag2complex() + R.real2complex() * Z, torch.exp(1j * r) + 1j * r + r * z),
    ]
    for k, (lazy, dense) in enumerate(cases):
        torch.testing.assert_close(lazy.sum(dim=1), dense.expand(8, 9, 2).sum(1), msg=str(k))
    reals = [
        ((Z * W).real, (z * w).real),
        ((Z * W).imag, (z * w).imag),
        ((Z - W).abs(), (z - w).abs()),
        ((Z - W).angle(), (z - w).angle()),
    ]
    for lazy, dense in reals:
        out = lazy.sum(dim=1)
        assert not out.is_complex()
        torch.testing.assert_close(out, dense.sum(1))
    torch.testing.assert_close((Z * W).sum(-1).sum(dim=1), (z * w).sum(-1, keepdim=True).sum(1))


def test_reductions_other_than_sum_are_refused():
    Z = LazyTensor(torch.randn(5, 1, 2, dtype=C128))
    with pytest.raises(TypeError, match="Min of a complex LazyTensor"):
        Z.min(dim=1)
    with pytest.raises(TypeError, match="LogSumExp of a complex"):
        Z.logsumexp(dim=0)


def test_numpy_complex_lazytensors():
    """KeOps' test_complex_numpy.py expression, complex128 and complex64."""
    rng = np.random.default_rng(0)
    for dt, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x = rng.random((30, 1, 3)).astype(dt) + 1j * rng.random((30, 1, 3)).astype(dt)
        y = rng.random((1, 40, 3)).astype(dt) + 1j * rng.random((1, 40, 3)).astype(dt)

        def f(x, y, lazy):
            if lazy:
                x, y = tn.LazyTensor(x), tn.LazyTensor(y)
            return ((x * y) * y.real + x + x.real).sum(axis=2).sum(axis=0)

        got, want = f(x, y, True), f(x, y, False)
        assert isinstance(tn.LazyTensor(x), tn.ComplexLazyTensor)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got.squeeze(), want.squeeze(), rtol=tol)
