"""Formula strings as pykeops reads them: it evaluates them with Python's operators
(keopscore's ``Operation.__pow__``, ``__or__``...), so ``f**2`` is ``Square(f)``, ``f**m``
``Pow(f, m)`` for an integer m, and ``a|b`` a dot product with or without parentheses, with
Python's precedence; and ``Pow`` of any integer exponent, against torch in float64."""

from __future__ import annotations

import math

import pytest
import torch

import tvmred
from tvmred.parse import parse, parse_aliases
from tvmred.torch import Genred

ALIASES = parse_aliases(["x = Vi(3)", "y = Vj(3)", "s = Vi(1)"])

# (pykeops text, the same formula with its operations named) -- keopscore's rules:
# f**2 -> Square(f), f**m -> Pow(f, m), f**1 -> f, f|g -> Scalprod(f, g); Python's
# precedence: ** above unary minus (-x**2 = -(x**2)), a signed exponent (x**-1), ** right
# associative (x**2**2 = x**4), | below + and * and above comparisons
PAIRS = [
    ("(x-y)**2", "Square(x-y)"),
    ("x**3", "Pow(x,3)"),
    ("x**-1", "Pow(x,-1)"),
    ("-x**2", "-Square(x)"),
    ("x**2**2", "Pow(x,4)"),
    ("x**-2**2", "Pow(x,-4)"),
    ("x**(1)", "x"),
    ("x**(1+1)", "Square(x)"),
    ("x**2.0", "Square(x)"),
    ("2*x**2", "2*Square(x)"),
    ("x*2**3", "x*8"),
    ("(-x)**3", "Pow(-x,3)"),
    ("x|y", "(x|y)"),
    ("x-y|x+y", "((x-y)|(x+y))"),
    ("Exp(-(x|y))", "Exp(-((x|y)))"),
    ("Exp(x|y)", "Exp((x|y))"),
    ("x|y < s", "(x|y) < s"),
    ("(x|y)**2", "Square((x|y))"),
]


@pytest.mark.parametrize("text,named", PAIRS)
def test_python_operators_read_as_pykeops_reads_them(text, named):
    assert parse(text, ALIASES) == parse(named, ALIASES)


@pytest.mark.parametrize("text", ["x**y", "x**2.5", "2**x", "x**s"])
def test_a_power_takes_an_integer_exponent(text):
    with pytest.raises(tvmred.ParseError, match="integer constant exponent.*Powf"):
        parse(text, ALIASES)


def test_an_exponent_beyond_32_bits_is_named():
    for text in ("x**(2**40)", "Pow(x,4294967296)"):
        with pytest.raises(tvmred.DimError, match="exponent must fit 32 bits"):
            parse(text, ALIASES)


def test_constant_powers_out_of_range_are_named():
    with pytest.raises(tvmred.ParseError, match="constant power"):
        parse("x*2**5000", ALIASES)
    with pytest.raises(tvmred.ParseError, match="constant power"):
        parse("x*0**-1", ALIASES)


def test_operators_in_a_call_against_torch():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.rand(40, 3, generator=g, dtype=torch.float64) + 0.5,
        torch.rand(30, 3, generator=g, dtype=torch.float64),
    )
    s = torch.rand(40, 1, generator=g, dtype=torch.float64)
    f = Genred("Exp(-(x-y)**2) * (x|y)**3 - x**-1 + (x-y|x-y) * s", ["x = Vi(3)", "y = Vj(3)", "s = Vi(1)"],
               reduction_op="Sum", axis=1)  # fmt: skip
    d = x[:, None, :] - y[None, :, :]
    dot = (x[:, None, :] * y[None, :, :]).sum(-1, keepdim=True)
    want = (
        torch.exp(-(d**2)) * dot**3 - 1 / x[:, None, :] + (d * d).sum(-1, keepdim=True) * s[:, None]
    ).sum(1)
    torch.testing.assert_close(f(x, y, s), want, rtol=1e-12, atol=0)


# Pow(f, n) of any integer n: squarings up to POW_SQUARING_MAX, exp(n log|f|) past it, as
# pykeops' pow (and never a compile that grows as 2^(number of squarings))
POWERS = [1025, -1025, 5001, -5001, 2**31 - 1, -(2**31)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pow_of_large_exponents_against_torch(dtype):
    from tvmred.ops import POW_SQUARING_MAX

    assert POW_SQUARING_MAX < min(abs(n) for n in POWERS)
    g = torch.Generator().manual_seed(1)
    near_one = 1 + 0.01 * (2 * torch.rand(50, 1, generator=g, dtype=torch.float64) - 1)
    special = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, math.inf, -math.inf, math.nan]
    x = torch.cat([near_one, -near_one, torch.tensor(special, dtype=torch.float64)[:, None]]).to(
        dtype
    )
    one = torch.ones(1, 1, dtype=dtype)
    formula = f"Pow(x,{POWERS[0]})"
    for n in POWERS[1:]:  # one kernel: a column per exponent
        formula = f"Concat({formula},Pow(x,{n}))"
    formula += "*y"
    got = Genred(formula, ["x = Vi(1)", "y = Vj(1)"], reduction_op="Sum", axis=1)(x, one)
    xd = x.double()
    eps, tiny, big = torch.finfo(dtype).eps, torch.finfo(dtype).tiny, torch.finfo(dtype).max
    for k, n in enumerate(POWERS):
        want = xd[:, 0] ** n
        out = got[:, k].double()
        ok = (want.abs() > tiny) & (want.abs() < big)  # normal results: within the bound
        bound = (n * torch.log(xd[:, 0].abs())).abs() + 8  # |n log|x|| + a few ulps
        err = (out - want).abs() / want.abs()
        assert (err[ok] <= bound[ok] * eps).all(), (n, err[ok].max().item())
        # zeros (subnormals flushed, as everywhere in tvmred; the sum's +0 takes a -0),
        # infinities and NaN where the result under/overflows the dtype
        rest = ~ok
        w = want[rest].to(dtype).double()
        w = torch.where(w.abs() < tiny, 0.0, w)
        same = (out[rest] == w) | (out[rest].isnan() & w.isnan())
        assert same.all(), (n, out[rest], w)


def test_the_gradient_of_a_large_power():
    x = (1 + 0.01 * torch.rand(20, 1, dtype=torch.float64)).requires_grad_()
    y = torch.ones(1, 1, dtype=torch.float64)
    out = Genred("Pow(x,2000)*y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="Sum", axis=1)(x, y)
    (g,) = torch.autograd.grad(out.sum(), x)
    want = 2000 * x.detach() ** 1999
    torch.testing.assert_close(g, want, rtol=(1999 * 0.01 + 8) * 2.0**-52, atol=0)


def test_grad_matrix_is_the_jacobian():
    """keopscore's GradMatrix(f, v): row k the gradient of f_k, against torch's jacobian."""
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.rand(5, 3, generator=g, dtype=torch.float64),
        torch.rand(7, 2, generator=g, dtype=torch.float64),
    )
    b = torch.rand(7, 3, generator=g, dtype=torch.float64)
    got = Genred("GradMatrix(Exp(-SqDist(Elem(x,0)*y,Extract(x,1,2))) * b + x*x, x)",
                 ["x = Vi(3)", "y = Vj(2)", "b = Vj(3)"], reduction_op="Sum", axis=1)(x, y, b)  # fmt: skip

    def f(xx):
        d = ((xx[:, None, :1] * y[None] - xx[:, None, 1:]) ** 2).sum(-1, keepdim=True)
        return torch.exp(-d) * b[None] + (xx * xx)[:, None, :]

    jac = torch.autograd.functional.jacobian(f, x)  # (M, N, 3, M, 3)
    want = torch.stack([jac[i, :, :, i, :].sum(0).reshape(9) for i in range(5)])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "text,named",
    [
        ("SqNormIso(s, x-y)", "s*SqNorm2(x-y)"),
        ("SqNormDiag(x, y)", "Sum(x*Square(y))"),
        ("Factorize(Exp(x|y)*(x|y), (x|y))", "Exp(x|y)*(x|y)"),
        ("AutoFactorize(x-y)", "x-y"),
        ("DiffClampInt(x, 0, 1)", "(1-(x<0))*(1-(1<x))"),
    ],
)
def test_keopscore_names(text, named):
    """keopscore's formula names beside WeightedSqNorm / GradMatrix (their values:
    tests/test_ops.py, against each op's reference)."""
    assert parse(text, ALIASES) == parse(named, ALIASES)
