"""Every reduction x axis 0/1 x float32/float64 against dense float64 torch references, the
gradients (including the Min/Max/KMin gradients pykeops lacks), and the numerics cases."""

import os
import re

import pytest
import torch

from tvmred.torch import Genred

F64 = torch.float64

M, N, K = 60, 80, 4
AL = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"]
F = "SqDist(x,y) - (x|b2)"  # a vector formula is built below; this one is scalar


def data(dtype=torch.float64, M=M, N=N):
    x = torch.rand(M, 3, dtype=torch.float64)
    y = torch.rand(N, 3, dtype=torch.float64)
    b = torch.rand(N, 2, dtype=torch.float64)
    return [t.to(dtype) for t in (x, y, b)]


def grid(x, y, b, axis):
    """(rows of output, reduced, ...) views: reduce over dim 1 of the returned tensors."""
    x, y, b = (t.double() for t in (x, y, b))
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1, keepdim=True)  # (M, N, 1)
    vec = torch.cat([d2, d2 * b[None, :, :1] - x[:, None, :1]], -1)  # (M, N, 2)
    bb = b[None].expand(x.shape[0], -1, -1)
    if axis == 0:
        d2, vec, bb = (t.transpose(0, 1) for t in (d2, vec, bb))
    return d2, vec, bb


VEC = "Concat(SqDist(x,y), SqDist(x,y)*Elem(b,0) - Elem(x,0))"


def dense(red, x, y, b, axis, k=K):
    d2, vec, bb = grid(x, y, b, axis)
    if red in ("Sum", "Min", "Max", "ArgMin", "ArgMax", "Min_ArgMin", "Max_ArgMax"):
        if red == "Sum":
            return vec.sum(1)
        fn = torch.min if "Min" in red else torch.max
        v, i = fn(vec, 1)
        return {"Min": v, "Max": v, "ArgMin": i, "ArgMax": i}.get(red, (v, i))
    if red in ("KMin", "ArgKMin", "KMin_ArgKMin"):
        v, i = vec.topk(k, dim=1, largest=False)  # (rows, K, 2)
        return {"KMin": v, "ArgKMin": i}.get(red, (v, i))
    f = -d2[..., 0]
    if red == "LogSumExp":
        return torch.logsumexp(f, 1, keepdim=True)
    if red == "LogSumExpWeight":
        return torch.log(torch.einsum("mn,mnd->md", f.exp(), bb))
    if red == "SumSoftMaxWeight":
        return torch.einsum("mn,mnd->md", torch.softmax(f, 1), bb)
    if red == "Max_SumShiftExp":
        m = f.max(1, keepdim=True).values
        return torch.cat([m, (f - m).exp().sum(1, keepdim=True)], 1)
    raise KeyError(red)


def routine(red, axis, genred=Genred):
    """The test's reduction ``red`` over ``axis``, built by ``genred`` (a binding's Genred)."""
    if red in ("LogSumExp", "Max_SumShiftExp"):
        return genred("-SqDist(x,y)", AL, reduction_op=red, axis=axis)
    if red in ("LogSumExpWeight", "SumSoftMaxWeight"):
        return genred("-SqDist(x,y)", AL, reduction_op=red, axis=axis, formula2="b")
    return genred(VEC, AL, reduction_op=red, axis=axis, opt_arg=K if "KMin" in red else None)


ALL = [
    "Sum",
    "Min",
    "Max",
    "ArgMin",
    "ArgMax",
    "Min_ArgMin",
    "Max_ArgMax",
    "KMin",
    "ArgKMin",
    "KMin_ArgKMin",
    "LogSumExp",
    "LogSumExpWeight",
    "SumSoftMaxWeight",
    "Max_SumShiftExp",
]


def check(got, want, tol):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == 2
        check(got[0], want[0], tol)
        check(got[1], want[1], tol)
        return
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype == torch.int64:
        assert got.dtype == torch.int64
        assert torch.equal(got, want)
    else:  # each column at its own scale (a large column must not hide a wrong small one)
        scale = want.abs().amax(dim=0, keepdim=True).clamp(min=1e-300)
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", ALL)
def test_values(red, axis, dtype, tol):
    x, y, b = data(dtype)
    check(routine(red, axis)(x, y, b), dense(red, x, y, b, axis), tol)


DIFFERENTIABLE = [
    "Sum",
    "Min",
    "Max",
    "Min_ArgMin",
    "Max_ArgMax",
    "KMin",
    "KMin_ArgKMin",
    "LogSumExp",
    "LogSumExpWeight",
    "SumSoftMaxWeight",
]


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red", DIFFERENTIABLE)
def test_gradients(red, axis):
    check_gradients(red, axis)


def check_gradients(red, axis):
    """Gradients w.r.t. every input against torch autograd on the dense reference."""
    ts = [t.requires_grad_() for t in data()]
    out = routine(red, axis)(*ts)
    out = out[0] if isinstance(out, tuple) else out
    refs = [t.detach().clone().requires_grad_() for t in ts]
    want = dense(red, *refs, axis)
    want = want[0] if isinstance(want, tuple) else want
    e = torch.randn_like(want)
    got_g = torch.autograd.grad(out, ts, e, allow_unused=True)
    want_g = torch.autograd.grad(want, refs, e, allow_unused=True)
    for g, w, t in zip(got_g, want_g, ts):
        g = torch.zeros_like(t) if g is None else g
        w = torch.zeros_like(t) if w is None else w
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("red", ["Min", "Max", "KMin", "LogSumExp", "SumSoftMaxWeight"])
def test_gradcheck_finite_differences(red):
    ts = [t.requires_grad_() for t in data(M=7, N=9)]
    r = routine(red, 1)
    assert torch.autograd.gradcheck(lambda *a: r(*a), ts)
    if red in ("LogSumExp", "SumSoftMaxWeight", "Min"):
        assert torch.autograd.gradgradcheck(lambda *a: r(*a), ts)


def test_arg_outputs_are_not_differentiable():
    ts = [t.requires_grad_() for t in data()]
    v, i = routine("Min_ArgMin", 1)(*ts)
    assert v.requires_grad and not i.requires_grad and i.dtype == torch.int64
    assert not routine("ArgKMin", 1)(*ts).requires_grad


def test_max_sumshiftexp_has_no_gradient():
    ts = [t.requires_grad_() for t in data()]
    out = routine("Max_SumShiftExp", 1)(*ts)
    with pytest.raises(NotImplementedError, match="no gradient"):
        out.sum().backward()


# ------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_stable_for_huge_values(dtype):
    x = torch.tensor([[1e4], [-1e4], [0.0]], dtype=dtype)
    y = torch.tensor([[1.0], [2.0], [-3.0], [1e4]], dtype=dtype)
    g = Genred("x*y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="LogSumExp", axis=1)
    got = g(x, y)
    want = torch.logsumexp(x.double() * y.double().T, 1, keepdim=True)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    s = Genred(
        "x*y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="SumSoftMaxWeight", axis=1, formula2="y"
    )(x, y)
    want_s = torch.softmax(x.double() * y.double().T, 1) @ y.double()
    torch.testing.assert_close(s.double(), want_s, rtol=1e-6, atol=1e-6)


def test_ties_resolve_to_lowest_index():
    x = torch.zeros(5, 1, dtype=torch.float64)
    y = torch.tensor([[3.0], [1.0], [2.0], [1.0], [1.0], [3.0]], dtype=torch.float64)
    al = ["x = Vi(1)", "y = Vj(1)"]
    assert Genred("x+y", al, reduction_op="ArgMin", axis=1)(x, y).flatten().tolist() == [1] * 5
    assert Genred("x+y", al, reduction_op="ArgMax", axis=1)(x, y).flatten().tolist() == [0] * 5
    assert Genred("x+y", al, reduction_op="ArgKMin", axis=1, opt_arg=4)(x, y)[0].tolist() == [
        1,
        3,
        4,
        2,
    ]


@pytest.mark.parametrize("red", ["Min", "Max", "LogSumExp", "Sum"])
def test_inf_and_nan_like_torch(red):
    y = torch.tensor(
        [[1.0], [float("inf")], [-2.0], [float("-inf")], [float("nan")], [0.5]], dtype=torch.float64
    )
    rows = [[0, 2, 5], [0, 1, 2], [2, 3, 5], [1, 3], [0, 4, 2], [4]]
    for r in rows:
        yy = y[r]
        x = torch.zeros(3, 1, dtype=torch.float64)
        got = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op=red, axis=1)(x, yy)[:, 0]
        t = yy[:, 0]
        want = {"Min": t.min(), "Max": t.max(), "LogSumExp": torch.logsumexp(t, 0), "Sum": t.sum()}[
            red
        ]
        torch.testing.assert_close(got, want.expand(3), equal_nan=True, msg=f"{red} of {t}")
    if red in ("Min", "Max"):
        idx = Genred("y", ["x = Vi(1)", "y = Vj(1)"], reduction_op=f"Arg{red}", axis=1)(
            torch.zeros(1, 1, dtype=torch.float64), y
        )
        assert idx.item() == 4  # the first NaN, as torch.argmin / argmax


def two_pass_block(dtype):
    """The j per block of the CPU template's two-pass LogSumExp (0: none), by its own rule."""
    from tvmred import schedules

    return schedules.template("llvm").two_pass(dtype, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_in_blocks_of_j_at_every_block_edge(dtype):
    """A unit-weight LogSumExp on the CPU runs j in blocks (a block's max, then its sum of
    exponentials, then one rescale): N below, at and past the block's edges, rows not a
    multiple of a row block, against torch.logsumexp in float64 -- with the softmin's
    exponents spread over 100 so the block's max changes often."""
    B = two_pass_block(str(dtype).split(".")[-1]) or 16
    torch.manual_seed(B)
    g = Genred("-SqDist(x,y)*c", ["x = Vi(3)", "y = Vj(3)", "c = Pm(1)"], "LogSumExp", axis=1)
    for n in (1, B - 1, B, B + 1, 3 * B + 5, 40 * B + 3):
        x, y = torch.rand(37, 3, dtype=torch.float64), torch.rand(n, 3, dtype=torch.float64)
        c = torch.tensor([30.0], dtype=torch.float64)
        want = torch.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) * c, 1)
        got = g(x.to(dtype), y.to(dtype), c.to(dtype))[:, 0].double()
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"N = {n}")


def test_logsumexp_blocks_with_infinities_and_nan_like_torch():
    """Blocks whose max is +inf (with and without a NaN beside it), blocks of -inf only (the
    whole row, or some blocks of it), a NaN alone: as torch.logsumexp, in every row -- and the
    raw state (Max_SumShiftExp) counts each term equal to the max as e^0 = 1, -inf ones too,
    never the padding past N (its dense definition below)."""
    B = two_pass_block("float64") or 16
    inf, nan = float("inf"), float("nan")
    n = 3 * B + 2
    cols = torch.randn(8, n, dtype=torch.float64)
    cols[1, B + 3] = inf  # a block's max +inf
    cols[2, B + 3], cols[2, B + 4] = inf, nan  # +inf and NaN in one block: NaN
    cols[3, :] = -inf  # a row of -inf
    cols[4, : 2 * B] = -inf  # whole blocks of -inf, then finite ones
    cols[5, 2 * B + 1 :] = -inf  # finite blocks, then -inf ones (the last one padded)
    cols[6, 5] = nan
    cols[7, 0], cols[7, n - 1] = inf, inf  # +inf in the first and the last (padded) block
    # F = x_i + y_j: row i is y shifted by x_i; y is one column of cols per call
    x = torch.zeros(1, 1, dtype=torch.float64)
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="LogSumExp", axis=1)
    raw = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="Max_SumShiftExp", axis=1)
    for r, row in enumerate(cols):
        got = g(x, row[:, None])[0, 0]
        torch.testing.assert_close(got, torch.logsumexp(row, 0), equal_nan=True, msg=f"row {r}")
        m, s = raw(x, row[:, None])[0]
        want_m = row.max() if not row.isnan().any() else None
        if want_m is not None:
            terms = torch.where(row == want_m, 1.0, torch.exp(row - want_m))
            assert m == want_m, f"row {r}"
            torch.testing.assert_close(s, terms.sum(), msg=f"row {r}")
        else:
            assert s.isnan(), f"row {r}"


@pytest.mark.parametrize("threads", ["1", "2"])  # one kernel; the split-j kernel (4 chunks)
def test_few_rows_logsumexp_with_infinities_like_torch(monkeypatch, threads):
    """One output row over 20011 j -- with 2 threads the split-j kernel, whose chunks' states
    are combined afterwards (a chunk's max of +inf gave NaN there: inf - inf): values, +inf,
    +inf beside NaN, -inf rows and -inf chunks as torch.logsumexp; the raw state of a row of
    -inf counts its N terms either way."""
    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    inf, nan, n = float("inf"), float("nan"), 20011
    torch.manual_seed(1)
    cols = torch.randn(6, n, dtype=torch.float64)
    cols[1, 7] = inf
    cols[2, 7], cols[2, 12000] = inf, nan
    cols[3, :] = -inf
    cols[4, : n // 2] = -inf
    cols[5, 15000:] = -inf
    x = torch.zeros(1, 1, dtype=torch.float64)
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="LogSumExp", axis=1)
    for r, row in enumerate(cols):
        got = g(x, row[:, None])[0, 0]
        torch.testing.assert_close(got, torch.logsumexp(row, 0), equal_nan=True, msg=f"row {r}")
    raw = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="Max_SumShiftExp", axis=1)
    m, s = raw(x, cols[3][:, None])[0]
    assert m == -inf and s == n


def softmax_reference(F, w):
    """sum_j softmax_j(F) w_j in float64, torch's IEEE arithmetic (0 * inf is NaN)."""
    return (torch.softmax(F, 1)[:, :, None] * w[None]).sum(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_logsumexp_in_blocks_at_every_block_edge(dtype):
    """SumSoftMaxWeight (64 value columns and 3, the attention layout: a block's weighted
    sums as matrix products) and a LogSumExp with a weight run j in blocks on the CPU: N
    below, at and past the block's edges, rows not a multiple of a row block, against the
    dense float64 reference -- exponents spread over 100 so the block's max changes often."""
    B = two_pass_block(str(dtype).split(".")[-1]) or 16
    torch.manual_seed(B + 1)
    al = ["x = Vi(3)", "y = Vj(3)", "c = Pm(1)"]
    tol = 1e-12 if dtype == torch.float64 else 3e-5
    for e in (64, 3):
        soft = Genred("-SqDist(x,y)*c", [*al, f"b = Vj({e})"], "SumSoftMaxWeight", axis=1,
                      formula2="b")  # fmt: skip
        for n in (1, B - 1, B, B + 1, 3 * B + 5, 40 * B + 3):
            x, y = torch.rand(37, 3, dtype=F64), torch.rand(n, 3, dtype=F64)
            b, c = torch.randn(n, e, dtype=F64), torch.tensor([30.0], dtype=F64)
            F = -((x[:, None] - y[None]) ** 2).sum(-1) * c
            got = soft(x.to(dtype), y.to(dtype), c.to(dtype), b.to(dtype)).double()
            torch.testing.assert_close(got, softmax_reference(F, b), rtol=tol, atol=tol,
                                       msg=f"E = {e}, N = {n}")  # fmt: skip
    lse = Genred("-SqDist(x,y)*c", [*al, "w = Vj(1)"], "LogSumExp", axis=1, formula2="w")
    x, y = torch.rand(37, 3, dtype=F64), torch.rand(3 * B + 5, 3, dtype=F64)
    w, c = torch.rand(3 * B + 5, 1, dtype=F64) + 0.1, torch.tensor([30.0], dtype=F64)
    want = torch.logsumexp(-((x[:, None] - y[None]) ** 2).sum(-1) * c + w.log().T, 1)
    got = lse(x.to(dtype), y.to(dtype), c.to(dtype), w.to(dtype))[:, 0].double()
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", ["1", "2"])  # one kernel; the split-j kernel
def test_weighted_blocks_with_infinities_and_nan_like_torch(monkeypatch, threads):
    """SumSoftMaxWeight in blocks: a block's max +inf, +inf beside NaN, rows of -inf, -inf
    blocks, a NaN, and weights of +inf and NaN at the last j (in the padded block: the
    padding past N must not turn an infinite sum into NaN) -- as the dense reference, with
    the split-j kernel's chunks (few rows, 2 threads) too."""
    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    B = two_pass_block("float64") or 16
    inf, nan = float("inf"), float("nan")
    n = 3 * B + 2 if threads == "1" else 20011
    torch.manual_seed(2)
    cols = torch.randn(8, n, dtype=F64)
    cols[1, B + 3] = inf
    cols[2, B + 3], cols[2, B + 4] = inf, nan
    cols[3, :] = -inf
    cols[4, : 2 * B] = -inf
    cols[5, 2 * B + 1 :] = -inf
    cols[6, 5] = nan
    x = torch.zeros(1, 1, dtype=F64)
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)", "b = Vj(2)"], "SumSoftMaxWeight", axis=1,
               formula2="b")  # fmt: skip
    for last in (1.0, inf, nan):
        b = torch.randn(n, 2, dtype=F64)
        b[n - 1, 0] = last
        for r, row in enumerate(cols):
            got = g(x, row[:, None], b)[0]
            want = softmax_reference(row[None], b)[0]
            torch.testing.assert_close(got, want, equal_nan=True, msg=f"row {r}, b {last}")


def test_which_cpu_logsumexp_runs_in_blocks():
    """The two-pass form is chosen on the CPU template for LogSumExp without a weight (and
    its raw state), split-j kernels included, and for a weight made of variables and
    constants (SumSoftMaxWeight's: 1 and the values) of float16/32/64 inputs; not for a
    weight that is a formula of its own (it may share stages with F), nor bfloat16 weights,
    nor on CUDA without tiles and TVMRED_CUDA_TWO_PASS (test_cuda_codegen: with them)."""
    from tvmred import schedules
    from tvmred.frontend import make_reduction
    from tvmred.lower import lower

    B = two_pass_block("float32")
    cuda = schedules.template("cuda").two_pass
    assert B > 0 and cuda("float32", 0) == 0
    if not os.environ.get("TVMRED_CUDA_TWO_PASS"):
        assert cuda("float32", 128) == 0
    al = ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"]
    for red, w, split, want in [
        ("LogSumExp", None, False, B),
        ("Max_SumShiftExp", None, False, B),
        ("LogSumExp", None, True, B),  # split-j: blocks within each chunk
        ("LogSumExpWeight", "b", False, B),
        ("SumSoftMaxWeight", "b", False, B),
        ("SumSoftMaxWeight", "b", True, B),
        ("SumSoftMaxWeight", "Exp(b)", False, 0),
        ("SumSoftMaxWeight", "b", "bfloat16", 0),  # its values are bit operations
        ("LogSumExp", None, "bfloat16", B),
    ]:
        r = make_reduction("-SqDist(x,y)", al, red, 1, "auto", None, formula2=w)
        dtype = split if isinstance(split, str) else "float32"
        low = lower(r.spec(dtype, split is True), 16, "poly", 0, B)
        assert low.shape.two_pass == want, (red, split)


def million_terms():
    """A million float32 values near 0.1: a naive float32 running sum drifts by about 1e-2
    relative (each addition to a large total rounds), compensated or blocked sums stay near
    1e-7 -- a margin of 1000x for the tests below."""
    y = 0.1 + 1e-3 * torch.rand(1_000_000, 1)
    return y, y.double().sum().item()


def relative_error(y, exact, **kw):
    got = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], axis=1, **kw)(torch.zeros(3, 1), y)
    assert got.dtype == torch.float32
    return abs(got[0, 0].item() - exact) / exact


@pytest.mark.parametrize("threads", ["1", "2"])  # one kernel; the split-j kernel
def test_float32_sum_accuracy_over_a_million_terms(monkeypatch, threads):
    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    y, exact = million_terms()
    for kw in (
        {"dtype_acc": "float64"},
        {"sum_scheme": "kahan_scheme"},
        {"sum_scheme": "block_sum"},
        {},
    ):
        assert relative_error(y, exact, **kw) < 1e-5, kw  # the default is block_sum


@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("scheme", ["block_sum", "direct_sum", "kahan_scheme"])
def test_sums_at_block_boundaries(monkeypatch, threads, scheme):
    """Every term counted once whatever N is beside the block sums' pieces of BLOCK terms
    (a piece cut short at N, a split-j chunk ending inside a piece), against float64."""
    from tvmred.reductions.sum import BLOCK

    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    g = Genred(
        "Exp(-SqDist(x,y))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(2)"], axis=1, sum_scheme=scheme
    )
    for n in (1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, 9 * BLOCK + 77):
        x, y, b = torch.rand(70, 2), torch.rand(n, 2), torch.rand(n, 2)
        want = torch.exp(-(torch.cdist(x.double(), y.double()) ** 2)) @ b.double()
        torch.testing.assert_close(g(x, y, b).double(), want, rtol=1e-5, atol=0)  # a term: 1e-4


def test_direct_float32_sum_is_indeed_less_accurate(monkeypatch):
    """Guards the accuracy test above against passing trivially: the naive sum fails it (in
    one kernel: one kernel thread, so no split-j, whose chunks are partial sums)."""
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    y, exact = million_terms()
    assert relative_error(y, exact, sum_scheme="direct_sum") > 1e-3


def test_argmin_index_exact_beyond_float32_range():
    n = 2**24 + 5
    y = torch.zeros(n, 1)
    y[n - 1] = -1.0  # the minimum is at index 2^24 + 4, not representable in float32
    y[n - 3] = -0.5
    x = torch.zeros(2, 1)
    idx = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="ArgMin", axis=1)(x, y)
    assert idx.dtype == torch.int64 and idx.flatten().tolist() == [n - 1, n - 1]
    idx2 = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], reduction_op="ArgKMin", axis=1, opt_arg=2)(
        x, y
    )
    assert idx2[0].tolist() == [n - 1, n - 3]


def test_reduction_argument_errors():
    with pytest.raises(ValueError, match="opt_arg=K"):
        Genred("x", ["x = Vi(1)"], reduction_op="KMin")
    with pytest.raises(ValueError, match="requires formula2"):
        Genred("x", ["x = Vi(1)"], reduction_op="SumSoftMaxWeight")
    with pytest.raises(ValueError, match="scalar formula"):
        Genred("x", ["x = Vi(2)"], reduction_op="LogSumExp")
    with pytest.raises(ValueError, match="takes no formula2"):
        Genred("x", ["x = Vi(1)"], reduction_op="Sum", formula2="x")


def test_fewer_reduced_rows_than_k():
    x, y = torch.rand(4, 3, dtype=torch.float64), torch.rand(3, 3, dtype=torch.float64)
    v, i = Genred(
        "SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="KMin_ArgKMin", axis=1, opt_arg=5
    )(x.requires_grad_(), y)
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    s, order = d2.sort(1)
    torch.testing.assert_close(v[:, :3], s)
    assert torch.equal(i[:, :3], order) and torch.all(i[:, 3:] == -1)
    assert torch.all(torch.isinf(v[:, 3:]))
    (g,) = torch.autograd.grad(v[:, :3].sum(), x)
    (gr,) = torch.autograd.grad(s.sum(), x)
    torch.testing.assert_close(g, gr)


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_kmin_over_many_rows_with_ties_inf_nan(dtype, k, axis):
    """Enough reduced rows that the CPU kernel's early exit (skip the insertion when no lane of
    a SIMD block would insert) is taken most of the time; integer values give many ties, and
    some distances are inf or NaN (there are always K finite ones, so neither is picked)."""
    g = torch.Generator().manual_seed(k)  # on the CPU; the data then go to the test device
    m, n = 77, 3000  # m output rows, n reduced rows
    x = torch.randint(0, 6, (m, 1), generator=g, device="cpu").to(torch.float64)
    y = torch.randint(0, 40, (n, 1), generator=g, device="cpu").to(torch.float64)
    y[torch.randperm(n, generator=g, device="cpu")[:50]] = float("inf")
    y[torch.randperm(n, generator=g, device="cpu")[:50]] = float("nan")
    x, y = x.to(torch.get_default_device()), y.to(torch.get_default_device())
    al = ["x = Vi(1)", "y = Vj(1)"] if axis == 1 else ["x = Vj(1)", "y = Vi(1)"]
    v, i = Genred("Abs(x-y)", al, reduction_op="KMin_ArgKMin", axis=axis, opt_arg=k)(
        x.to(dtype), y.to(dtype)
    )
    d = (x - y.T).abs()
    key = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)  # NaN: never picked
    want_v, want_i = key.sort(dim=1, stable=True)  # ties: lowest index first
    torch.testing.assert_close(v.double(), want_v[:, :k])
    assert torch.equal(i, want_i[:, :k])


def test_cpu_kselect_kernel_has_the_early_exit():
    import tvm
    from tvm import s_tir

    from tvmred import schedules
    from tvmred.build import row_block_for
    from tvmred.frontend import make_reduction
    from tvmred.lower import lower
    from tvmred.targets import cpu_target

    r = make_reduction("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], "ArgKMin", 1, "auto", 10)
    spec = r.spec("float32")
    tpl = schedules.template("llvm")
    low = lower(spec, row_block_for(spec, cpu_target()), tpl.math(cpu_target()))
    sch = tpl.schedule(s_tir.Schedule(low.func), low.shape, cpu_target())
    mod = tpl.finish(sch.mod, low.shape, cpu_target())
    assert isinstance(mod, tvm.IRModule) and "llvm.vector.reduce.or" in mod.script()


def test_wide_softmax_kernels_by_template():
    """The column chunks of a wide SumSoftMaxWeight follow the template: where it has
    two-pass kernels (the CPU), up to LSE_COLUMNS_BLOCKED columns a kernel, else (CUDA)
    LSE_COLUMNS; a weight of its own formula or bfloat16 ones keep LSE_COLUMNS."""
    from tvmred.frontend import make_reduction
    from tvmred.launch import column_chunks
    from tvmred.lower import lower
    from tvmred.reductions.lse import LSE_COLUMNS, LSE_COLUMNS_BLOCKED

    def chunks(e, device, dtype="float32", w="v"):
        al = ["q = Vi(8)", "k = Vj(8)", f"v = Vj({e})"]
        r = make_reduction("(q|k)", al, "SumSoftMaxWeight", 1, "auto", None, formula2=w)
        return column_chunks(r, dtype, device)

    def parts(*a, **kw):
        return len(chunks(*a, **kw))

    wide = LSE_COLUMNS_BLOCKED - 1  # the value columns one blocked kernel takes (+ the 1)
    assert parts(wide, "cpu") == 1 and parts(wide + 1, "cpu") == 2
    B = two_pass_block("float32")
    for part in chunks(wide + 1, "cpu"):  # slices of the weight: still blocked kernels
        assert lower(part.spec("float32"), 16, "poly", 0, B).shape.two_pass == B
    assert parts(wide, "cuda") == -(-(wide + 1) // LSE_COLUMNS)
    assert parts(wide, "cpu", "bfloat16") == parts(wide, "cpu", w="Exp(v)") == parts(wide, "cuda")


@pytest.mark.parametrize("dim", [3, 40, 70, 140])
def test_wide_softmax_weights_share_one_max(dim):
    """SumSoftMaxWeight / LogSumExpWeight / Max_SumShiftExpWeight with many weight columns
    (one running max for all of them; past a kernel's columns, several kernels whose states
    join -- 140 on the CPU: two blocked kernels of 70 value columns each, slices of the
    weight) against dense float64 torch, with the gradient."""
    torch.manual_seed(dim)
    q = torch.randn(50, 8, dtype=torch.float64)
    k = torch.randn(60, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(60, dim, dtype=torch.float64, requires_grad=True)
    al = ["q = Vi(8)", "k = Vj(8)", f"v = Vj({dim})"]
    s = q @ k.T
    out = Genred("(q|k)", al, reduction_op="SumSoftMaxWeight", formula2="v", axis=1)(q, k, v)
    ref = torch.softmax(s, 1) @ v
    torch.testing.assert_close(out, ref)
    e = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (k, v), e), torch.autograd.grad(ref, (k, v), e)):
        torch.testing.assert_close(a, b)
    w = v.detach().abs() + 0.1  # positive weights: log sum_j exp(s) w_j
    lse = Genred("(q|k)", al, reduction_op="LogSumExpWeight", formula2="v", axis=1)(q, k, w)
    torch.testing.assert_close(lse, torch.logsumexp(s.detach()[:, :, None] + w.log()[None], 1))
    raw = Genred("(q|k)", al, reduction_op="Max_SumShiftExpWeight", formula2="v", axis=1)(q, k, w)
    m = s.detach().amax(1, keepdim=True)
    torch.testing.assert_close(raw, torch.cat([m, torch.exp(s.detach() - m) @ w], 1))


@pytest.mark.parametrize("red", ["Min_ArgMin", "Max_ArgMax"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_select_blocks_compare_one_simd_vector_at_a_time(red, dtype):
    """A Min/Max block of several SIMD vectors selects vector by vector: no boolean vector
    wider than the target's registers reaches LLVM (a 32-lane one is packed into bytes and
    unpacked at every j on AVX2), and the values are still the dense float64 answer."""
    from tvmred import build
    from tvmred.arrays import HOST
    from tvmred.frontend import make_reduction
    from tvmred.schedules.cpu import vector_registers
    from tvmred.targets import target_for

    r = make_reduction("SqDist(x,y)", ["x=Vi(3)", "y=Vj(3)"], red, 1, "auto", None)
    spec = r.spec(dtype)
    target = target_for(HOST)
    lanes = vector_registers(target)[1] // (64 if dtype == "float64" else 32)
    assert build.row_block_for(spec, target) > lanes  # several vectors a block
    ll = build.compile_reduction(spec, target)[0].mod.inspect_source("ll")
    widths = {int(w) for w in re.findall(r"select <(\d+) x i1>", ll)}
    assert widths and max(widths) <= lanes
    g = torch.Generator().manual_seed(1)
    x = torch.randn(301, 3, generator=g, dtype=getattr(torch, dtype))
    y = torch.randn(257, 3, generator=g, dtype=getattr(torch, dtype))
    d = torch.cdist(x.double(), y.double()) ** 2
    val, idx = Genred("SqDist(x,y)", ["x=Vi(3)", "y=Vj(3)"], reduction_op=red, axis=1)(x, y)
    want = (d.min(1) if red == "Min_ArgMin" else d.max(1)).values[:, None]
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {}
    torch.testing.assert_close(val.double(), want, **tol)
    torch.testing.assert_close(d.gather(1, idx.long()), want, **tol)
