"""A Sum of a scalar times several columns, ``sum_j s_ij V_ij`` (``tvmred.reductions.sum.scaled``:
a Gaussian times many weight columns, the gradient of a radial kernel ``s (x_i - y_j)``), runs
in blocks of j on the CPU: the block's scalars, then each column's sum over the block as a
matrix product's register tile, the block sums added in partial sums.  Which formulas take
it, and their values and gradients against dense float64 torch at every block edge, with
split-j chunks, infinities past N and a million terms."""

import pytest
import torch

from tvmred import schedules
from tvmred.frontend import make_reduction
from tvmred.lower import lower
from tvmred.reductions.sum import BLOCK, BLOCK_COLUMNS
from tvmred.torch import Genred

F64 = torch.float64
B = schedules.template("llvm").two_pass("float32", 0)  # j a block, by the template's rule


def blocks_of(formula, aliases, dtype="float32", scheme="auto", **spec):
    """(j a block, blocks a partial sum) of the CPU kernel of this Sum over j."""
    r = make_reduction(formula, aliases, "Sum", 1, "auto", sum_scheme=scheme)
    low = lower(r.spec(dtype, **spec), 16, "poly", 0, B)
    return low.shape.two_pass, low.shape.block


def test_which_sums_run_in_blocks():
    """A scalar times a variable, or a difference, sum or negation of variables, of
    BLOCK_COLUMNS columns or more, of any input dtype; its partial sums of BLOCK terms kept
    as BLOCK / B blocks.  Not: fewer columns, a product of two wide factors, columns that
    are a formula of their own, Kahan's sequential sum, block-sparse kernels, nor on CUDA."""
    assert B > 0 and BLOCK_COLUMNS > 1
    assert not schedules.template("cuda").two_pass_sums
    c = BLOCK_COLUMNS
    al = ["x = Vi(5)", "y = Vj(5)", f"b = Vj({c})", f"a = Vj({c - 1})", "p = Pm(1)"]
    blocked = (B, BLOCK // B)
    for formula, dtype, scheme, spec, want in [
        ("Exp(-SqDist(x,y))*b", "float32", "auto", {}, blocked),
        ("b*Exp(-SqDist(x,y))*p", "float64", "block_sum", {}, blocked),
        ("Exp(-SqDist(x,y))*b", "float16", "auto", {}, blocked),
        ("Exp(-SqDist(x,y))*b", "bfloat16", "auto", {}, blocked),
        ("Exp(-SqDist(x,y))*b", "float32", "direct_sum", {}, (B, 0)),
        ("Exp(-SqDist(x,y))*b", "float32", "auto", {"split": True}, blocked),
        ("p*2*Exp(-SqDist(x,y))*(x-y)", "float32", "auto", {}, blocked),  # a gradient
        ("Exp(-SqDist(x,y))*(x+y)", "float32", "auto", {}, blocked),
        ("Exp(-SqDist(x,y))*(-y)", "float32", "auto", {}, blocked),
        ("-(p*-(Exp(-SqDist(x,y))*(y-x)))", "float32", "auto", {}, blocked),  # d/dy's form
        ("Exp(-SqDist(x,y))*a", "float32", "auto", {}, (0, BLOCK)),
        ("Exp(-SqDist(x,y))*b*b", "float32", "auto", {}, (0, BLOCK)),
        ("Exp(-SqDist(x,y))*Exp(b)", "float32", "auto", {}, (0, BLOCK)),
        ("Exp(-SqDist(x,y))*b", "float32", "kahan_scheme", {}, (0, 0)),
        ("Exp(-SqDist(x,y))*b", "float32", "auto", {"ranged": True}, (0, BLOCK)),
    ]:
        assert blocks_of(formula, al, dtype, scheme, **spec) == want, (formula, dtype, spec)


def dense(x, y, b, c, kind):
    """The dense float64 answer of the test formulas (c: the Gaussian's scale)."""
    w = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1) * c)
    if kind == "weights":
        return w @ b
    if kind in ("difference", "negated"):
        sign = 2 if kind == "difference" else -2
        return (w[:, :, None] * (x[:, None] - y[None])).sum(1) * sign
    return (w[:, :, None] * (-y)[None]).sum(1)


FORMULAS = {
    "weights": "Exp(-SqDist(x,y)*c)*b",
    "difference": "2*Exp(-SqDist(x,y)*c)*(x-y)",
    "negation": "Exp(-SqDist(x,y)*c)*(-y)",
    "negated": "-(2*Exp(-SqDist(x,y)*c)*(x-y))",
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(FORMULAS))
def test_blocked_sums_at_every_block_edge(dtype, kind):
    """N below, at and past the block's edges and a partial sum's (BLOCK terms), rows not a
    multiple of a row block, against float64."""
    torch.manual_seed(len(kind))
    d, e = 6, 2 * BLOCK_COLUMNS + 1
    al = [f"x = Vi({d})", f"y = Vj({d})", f"b = Vj({e})", "c = Pm(1)"]
    g = Genred(FORMULAS[kind], al, "Sum", axis=1)
    assert blocks_of(FORMULAS[kind], al)[0] == B  # (the path under test)
    tol = 1e-12 if dtype == F64 else 2e-5
    for n in (1, B - 1, B, B + 1, 3 * B + 5, BLOCK + B + 3):
        x, y, b = (
            torch.rand(37, d, dtype=F64),
            torch.rand(n, d, dtype=F64),
            torch.randn(n, e, dtype=F64),
        )
        c = torch.tensor([2.0], dtype=F64)
        want = dense(x, y, b, c, kind)
        got = g(x.to(dtype), y.to(dtype), b.to(dtype), c.to(dtype)).double()
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=f"N = {n}")


@pytest.mark.parametrize("threads", ["1", "2"])  # one kernel; few rows: split-j chunks
def test_gaussian_gradients_of_64_dimensions(monkeypatch, threads):
    """The x- and y-gradients of a Gaussian sum of 64-dimensional points (each a blocked Sum
    of the kernel times x - y) against torch autograd in float64."""
    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    torch.manual_seed(64)
    m = 300 if threads == "1" else 5
    x = (torch.rand(m, 64, dtype=F64) / 8).requires_grad_()
    y = (torch.rand(2003, 64, dtype=F64) / 8).requires_grad_()
    b = torch.randn(2003, 1, dtype=F64)
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(64)", "y = Vj(64)", "b = Vj(1)"], "Sum", axis=1)
    xs, ys = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    out = g(xs, ys, b.float())
    u = torch.randn(m, 1, dtype=F64)
    got = torch.autograd.grad(out, (xs, ys), u.float())
    want = torch.autograd.grad(torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b, (x, y), u)
    for a, w in zip(got, want):
        torch.testing.assert_close(a.double(), w, rtol=1e-4, atol=1e-5 * w.abs().max().item())


@pytest.mark.parametrize("threads", ["1", "2"])
def test_blocked_sums_with_infinities_past_the_last_block_like_torch(monkeypatch, threads):
    """Columns of +-inf and NaN at the last j, in a block cut short by N (read again past N,
    where the block's scalars are 0: those reads must not turn an infinite sum into NaN), and
    a scalar of NaN: as the dense reference."""
    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    e = BLOCK_COLUMNS
    n = 3 * B + 2 if threads == "1" else 20011
    g = Genred("c*Exp(-SqDist(x,y))*b", ["x = Vi(1)", "y = Vj(1)", f"b = Vj({e})", "c = Pm(1)"],
               "Sum", axis=1)  # fmt: skip
    x, y, c = torch.rand(3, 1, dtype=F64), torch.rand(n, 1, dtype=F64), torch.ones(1, dtype=F64)
    inf = float("inf")
    for last in (inf, -inf, float("nan")):
        b = torch.randn(n, e, dtype=F64)
        b[n - 1, 0] = last
        want = torch.exp(-((x - y.T) ** 2)) @ b
        torch.testing.assert_close(g(x, y, b, c), want, equal_nan=True, msg=f"b {last}")
    y[n // 2, 0] = float("nan")  # a NaN scalar: its row's every column NaN
    want = torch.exp(-((x - y.T) ** 2)) @ b
    torch.testing.assert_close(g(x, y, b, c), want, equal_nan=True)


def test_blocked_float32_sum_of_a_million_terms_keeps_partial_sums(monkeypatch):
    """Blocks of B terms then partial sums of BLOCK: near 1e-7 relative over a million
    values near 0.1, where adding the 62 500 block sums one after the other drifts by about
    1e-4 (one kernel thread: no split-j, whose chunks are partial sums too)."""
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    e = BLOCK_COLUMNS
    y = 0.1 + 1e-3 * torch.rand(1_000_000, e)
    exact = y.double().sum(0)
    al = ["x = Vi(1)", f"y = Vj({e})"]
    g = Genred("x*y", al, "Sum", axis=1)
    assert blocks_of("x*y", al) == (B, BLOCK // B)
    got = g(torch.ones(3, 1), y)[0].double()
    assert ((got - exact).abs() / exact).max() < 1e-5


def test_a_blocked_sum_of_many_columns_is_one_kernel():
    """Blocked, a Sum's columns are summed in register tiles: one kernel however many there
    are (a 300-column gradient, 130 weight columns), where one-pass Sums run in slices of
    MAX_STATE columns (a product of two wide factors: test_edge_cases); values and the
    x-gradient against float64."""
    from tvmred.launch import MAX_STATE, column_chunks

    torch.manual_seed(300)
    d, e = 300, 2 * MAX_STATE + 2
    al = [f"x = Vi({d})", f"y = Vj({d})", f"b = Vj({e})"]
    x, y, b = (
        torch.rand(40, d, dtype=F64) / 20,
        torch.rand(50, d, dtype=F64) / 20,
        torch.randn(50, e, dtype=F64),
    )
    g = Genred("Exp(-SqDist(x,y))*b", al, "Sum", axis=1)
    assert len(column_chunks(g.reduction, "float32")) == 1
    assert len(column_chunks(g.reduction, "float32", ranged=True)) == 3  # one-pass: slices
    xs = x.float().requires_grad_()
    out = g(xs, y.float(), b.float())
    xd = x.clone().requires_grad_()
    want = torch.exp(-((xd[:, None] - y[None]) ** 2).sum(-1)) @ b
    torch.testing.assert_close(
        out.double(), want.detach(), rtol=1e-5, atol=1e-5 * want.abs().max().item()
    )
    u = torch.randn(40, e, dtype=F64)
    (got,), (ref,) = torch.autograd.grad(out, xs, u.float()), torch.autograd.grad(want, xd, u)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
