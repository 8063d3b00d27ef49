"""LazyTensor operators and math methods, torch and numpy, against dense float64 torch: each
expression is reduced over j and over i, and (torch) differentiated w.r.t. every input."""

import numpy as np
import pytest
import torch

from tvmred.numpy import LazyTensor as NpLazyTensor
from tvmred.torch import LazyTensor

M, N = 7, 9


def inputs():
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.7 * torch.rand(M, 3, generator=g, dtype=torch.float64)
    y = 0.2 + 0.7 * torch.rand(N, 3, generator=g, dtype=torch.float64)
    p1 = torch.tensor([0.7], dtype=torch.float64)
    p3 = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
    p9 = 0.1 + torch.rand(9, generator=g, dtype=torch.float64)
    return [x, y, p1, p3, p9]


def lazy_args(ts, cls):
    """x_i, y_j and parameters as LazyTensors of the binding ``cls``."""
    conv = (lambda t: t) if cls is LazyTensor else (lambda t: t.detach().numpy())
    x, y, p1, p3, p9 = (conv(t) for t in ts)
    return cls(x[:, None, :]), cls(y[None, :, :]), cls(p1), cls(p3), cls(p9)


def dense_args(ts):
    x, y, p1, p3, p9 = ts
    return x[:, None, :], y[None, :, :], p1, p3, p9


def row(t):
    return t.sum(-1, keepdim=True)


def wsq(s, f):
    """Dense WeightedSqNorm: s of dim 1, D or D^2 (row-major matrix)."""
    if s.shape[-1] == f.shape[-1] ** 2:
        S = s.reshape(f.shape[-1], f.shape[-1])
        return torch.einsum("...a,ab,...b->...", f, S, f)[..., None]
    return row(s * f * f)


def gauss(X, Y, p1):
    return (-X.sqdist(Y) * p1).exp() if hasattr(X, "sqdist") else (-row((X - Y) ** 2) * p1).exp()


# (lazy expression, dense expression): X (M,1,3), Y (1,N,3), p1 (1,), p3 (3,), p9 (9,)
OPS = {
    "add_sub_mul_div": (lambda X, Y, a, b, c: (X + Y) * (X - Y) / Y, None),
    "neg_abs": (lambda X, Y, a, b, c: abs(-X + Y), None),
    "int_scalars": (lambda X, Y, a, b, c: 2 * X + 3 - X / 2 + (1 - Y), None),
    "float_scalars": (lambda X, Y, a, b, c: 0.5 * X - 1.5 + X * 0.25 + 2.5 / Y + 1 / Y, None),
    "list_param": (lambda X, Y, a, b, c: X * [0.5, 1.0, 2.0] - Y, "list"),
    "pow": (lambda X, Y, a, b, c: (X - Y) ** 2 + (X - Y) ** 3 + X**0.5 + X**-0.5, None),
    "powf": (lambda X, Y, a, b, c: X**1.5 + X**Y + X**a, None),
    "dot": (lambda X, Y, a, b, c: X | Y, lambda X, Y, a, b, c: row(X * Y)),
    "comparisons": (
        lambda X, Y, a, b, c: (X < Y) + (X > Y) * 2 + (X <= Y) * 4 + (X >= Y) * 8 + (X != Y) * 3,
        lambda X, Y, a, b, c: sum(
            m.double() * k
            for m, k in ((X < Y, 1), (X > Y, 2), (X <= Y, 4), (X >= Y, 8), (X != Y, 3))
        ),
    ),
    "equal": (
        lambda X, Y, a, b, c: (X == X) + (X == Y),
        lambda X, Y, a, b, c: 1 + (X == Y).double(),
    ),
    "exp_log": (lambda X, Y, a, b, c: (-((X - Y) ** 2)).exp() + (X + Y).log(), None),
    "trig": (
        lambda X, Y, a, b, c: X.sin() * Y.cos() + (X * Y).asin() + (X * Y).acos() + (X - Y).atan(),
        None,
    ),
    "atan2": (lambda X, Y, a, b, c: (X - Y).atan2(X + Y), None),
    "sqrt_rsqrt": (lambda X, Y, a, b, c: (X + Y).sqrt() + (X + Y).rsqrt(), None),
    "relu_step_sign": (
        lambda X, Y, a, b, c: (X - Y).relu() + (X - Y).step() + (X - Y).sign(),
        lambda X, Y, a, b, c: (X - Y).relu() + ((X - Y) >= 0).double() + (X - Y).sign(),
    ),
    "clamp": (lambda X, Y, a, b, c: (5 * (X - Y)).clamp(-1, 1) + (X - Y).clamp(-b, b), None),
    "ifelse": (
        lambda X, Y, a, b, c: (X - Y).ifelse(X, Y * 2),
        lambda X, Y, a, b, c: torch.where(X - Y >= 0, X, Y * 2),
    ),
    "mod": (
        lambda X, Y, a, b, c: (3 * X).mod(0.7, 0.1) * Y,
        lambda X, Y, a, b, c: (3 * X - 0.7 * torch.floor((3 * X - 0.1) / 0.7)) * Y,
    ),
    "round": (
        lambda X, Y, a, b, c: (10 * X * Y).round(1),
        lambda X, Y, a, b, c: (10 * X * Y).round(decimals=1),
    ),
    "xlogx_sinxdivx_sinc": (
        lambda X, Y, a, b, c: X.xlogx() + (X - Y + 0.01).sinxdivx() + (X - Y).sinc(),
        lambda X, Y, a, b, c: X * X.log() + (X - Y + 0.01).sin() / (X - Y + 0.01) + (X - Y).sinc(),
    ),
    "square_power": (
        lambda X, Y, a, b, c: X.square() + Y.power(3),
        lambda X, Y, a, b, c: X**2 + Y**3,
    ),
    "norms": (
        lambda X, Y, a, b, c: (
            (X - Y).sqnorm2() + (X - Y).norm2() * 2 + X.norm(-1) + X.sqdist(Y) * 3
        ),
        lambda X, Y, a, b, c: (
            row((X - Y) ** 2) * 4 + row((X - Y) ** 2).sqrt() * 2 + row(X * X).sqrt()
        ),
    ),
    "normalize": (
        lambda X, Y, a, b, c: (X - Y).normalize(),
        lambda X, Y, a, b, c: (X - Y) / row((X - Y) ** 2).sqrt(),
    ),
    "weightedsqnorm": (
        lambda X, Y, a, b, c: (
            (X - Y).weightedsqnorm(a) + (X - Y).weightedsqnorm(b) + (X - Y).weightedsqnorm(c)
        ),
        lambda X, Y, a, b, c: wsq(a, X - Y) + wsq(b, X - Y) + wsq(c, X - Y),
    ),
    "weightedsqdist": (
        lambda X, Y, a, b, c: X.weightedsqdist(Y, b),
        lambda X, Y, a, b, c: wsq(b, X - Y),
    ),
    "indexing": (
        lambda X, Y, a, b, c: X[1] * Y[0:2] + X.elem(2) + X.extract(1, 2) + Y[:, :, 2] + Y[..., 1:],
        lambda X, Y, a, b, c: (
            X[..., 1:2] * Y[..., 0:2] + X[..., 2:3] + X[..., 1:3] + Y[..., 2:3] + Y[..., 1:]
        ),
    ),
    "concat": (
        lambda X, Y, a, b, c: X.concat(Y) + type(X).concatenate((Y, X)) + type(X).cat((X, b), -1),
        lambda X, Y, a, b, c: torch.cat([X + Y + X, Y + X + b.expand_as(Y)], -1).expand(M, N, 6),
    ),
    "matvec_vecmat_tensorprod": (
        lambda X, Y, a, b, c: c.matvecmult(X) + X.vecmatmult(c) + X.tensorprod(Y[0:2])[1:4],
        lambda X, Y, a, b, c: (
            (c.reshape(3, 3) @ X[..., None])[..., 0]
            + (X[..., None, :] @ c.reshape(3, 3))[..., 0, :]
            + (X[..., :, None] * Y[..., None, 0:2]).flatten(-2)[..., 1:4]
        ),
    ),
    "vector_reductions": (
        lambda X, Y, a, b, c: (X - Y).sum(-1) + (X - Y).min(-1) * 2 + (X - Y).max(2) * 3,
        lambda X, Y, a, b, c: (
            row(X - Y)
            + (X - Y).min(-1, keepdim=True).values * 2
            + (X - Y).max(-1, keepdim=True).values * 3
        ),
    ),
    "vector_argmin_argmax_onehot": (
        lambda X, Y, a, b, c: (
            (X - Y).argmin(-1) + (X - Y).argmax(-1) * 10 + (X[0] * 3).round().one_hot(4)
        ),
        lambda X, Y, a, b, c: (
            (X - Y).argmin(-1, keepdim=True)
            + (X - Y).argmax(-1, keepdim=True) * 10
            + torch.nn.functional.one_hot((X[..., 0] * 3).round().long(), 4)
        ),
    ),
    "grad_diff": (
        lambda X, Y, a, b, c: gauss(X, Y, a).grad(X, 1) + gauss(X, Y, a).diff(X, Y),
        lambda X, Y, a, b, c: (
            gauss(X, Y, a) * (-2 * a * (X - Y)) + row(gauss(X, Y, a) * (-2 * a * (X - Y)) * Y)
        ),
    ),
    "grad_matrix_divergence_laplacian": (
        lambda X, Y, a, b, c: (
            (X * Y).grad_matrix(X) + (X * Y).divergence(X) + X.sqdist(Y).laplacian(X)
        ),
        lambda X, Y, a, b, c: torch.diag_embed(Y.expand(M, N, 3)).flatten(-2) + row(Y) + 6,
    ),
    "factorize": (
        lambda X, Y, a, b, c: (X * Y).auto_factorize().factorize(X),
        lambda X, Y, a, b, c: X * Y,
    ),
}


def dense_of(name, ts):
    lazy, dense = OPS[name]
    args = dense_args(ts)
    if dense is None:
        return lazy(*args).expand(M, N, -1)
    if dense == "list":
        return args[0] * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64) - args[1]
    return dense(*args).double().expand(M, N, -1)


@pytest.mark.parametrize("name", sorted(OPS))
def test_values_and_gradients_torch(name):
    ts = [t.requires_grad_() for t in inputs()]
    K = OPS[name][0](*lazy_args(ts, LazyTensor))
    refs = [t.detach().clone().requires_grad_() for t in ts]
    D = dense_of(name, refs)
    assert K.shape == (M, N) + ((D.shape[-1],) if D.shape[-1] > 1 else ())
    for axis in (1, 0):
        torch.testing.assert_close(K.sum(dim=axis), D.sum(axis), rtol=1e-10, atol=1e-10)
    out, want = K.sum(dim=1), D.sum(1)
    e = torch.randn_like(want)
    got = torch.autograd.grad(out, ts, e, allow_unused=True)
    ref = [None] * 5
    if want.requires_grad:  # else (masks, indices) the gradient must be zero
        ref = torch.autograd.grad(want, refs, e, allow_unused=True)
    for g, w, t in zip(got, ref, ts):
        g = torch.zeros_like(t) if g is None else g
        w = torch.zeros_like(t) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(OPS))
def test_values_numpy(name):
    ts = inputs()
    K = OPS[name][0](*lazy_args(ts, NpLazyTensor))
    D = dense_of(name, ts).detach()
    for axis in (1, 0):
        got = K.sum(axis=axis)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, D.sum(axis).numpy(), rtol=1e-10, atol=1e-10)
