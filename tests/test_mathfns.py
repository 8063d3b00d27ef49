"""The SIMD exp and log (tvmred.mathfns) against numpy's, in ulps, and their special values."""

import math

import numpy as np
import pytest
import torch

from tvmred.targets import cpu_target


def avx512():
    from tvmred.schedules.cpu import vector_registers

    return vector_registers(cpu_target())[1] == 512


# "avx512" (one vscalef for 2^n) compiles only for a CPU that has it: elsewhere it is skipped
MODES = ["poly", pytest.param("avx512", marks=pytest.mark.skipif("not avx512()"))]


def compiled_exp(dtype, mode="poly", fn="exp"):
    import tvm
    from tvm import te

    from tvmred import mathfns

    nb = te.var("nb")  # length 16 * nb: the vectorised split needs no tail
    x = te.placeholder((nb * 16,), dtype, name="x")
    with mathfns.mode(mode):
        f = fn if callable(fn) else getattr(mathfns, fn)
        y = te.compute((nb * 16,), lambda i: f(x[i], dtype), name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y, nb]))
    (i,) = sch.get_loops(sch.get_sblock("y"))
    _, ii = sch.split(i, factors=[None, 16])
    sch.vectorize(ii)
    return tvm.compile(sch.mod, target=tvm.target.Target(cpu_target()))


def run(ex, x):
    """The compiled function on a numpy array (length a multiple of 16), as long doubles."""
    y = torch.zeros(len(x), dtype=getattr(torch, str(x.dtype)), device="cpu")  # a CPU kernel
    ex(torch.from_numpy(x).clone(), y, len(x) // 16)  # clone: 64-byte aligned, as TVM assumes
    return y.numpy().astype(np.longdouble)


def assert_exp_within_one_ulp(got, arg, dtype):
    """got = e^arg within 1 ulp where that is a normal number, 0 below ln(smallest normal)."""
    ref = np.exp(arg)
    ulp = np.spacing(ref.astype(dtype)).astype(np.longdouble)
    # below ln(smallest normal) the result is flushed to 0 (no denormal results)
    flushed = arg < np.log(np.longdouble(np.finfo(dtype).tiny))
    assert flushed.sum() > 1000 and np.all(got[flushed] == 0)
    normal = (ref > np.finfo(dtype).tiny) & ~flushed
    err = np.abs(got - ref)[normal] / ulp[normal]
    assert err.max() <= 1.0, err.max()
    # at the boundary (the threshold's rounding): within one denormal step
    rest = ~normal & ~flushed
    assert np.all(np.abs(got[rest] - ref[rest]) <= np.spacing(np.zeros(1, dtype))[0] * 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,lo,hi", [("float32", -103.0, 88.7), ("float64", -744.0, 709.7)])
def test_exp_within_one_ulp(dtype, lo, hi, mode):
    n = 1_000_000
    x = np.concatenate([np.linspace(lo, hi, n), np.random.default_rng(0).uniform(-5, 5, n)])
    x = x.astype(dtype)
    x = x[: len(x) - len(x) % 16]
    assert_exp_within_one_ulp(run(compiled_exp(dtype, mode), x), x.astype(np.longdouble), dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,hi", [("float32", 103.0), ("float64", 744.0)])
def test_exp_neg_within_one_ulp(dtype, hi, mode):
    """e^-y for y >= 0 (LogSumExp's rescale): the same bound as exp, flushed below the
    smallest normal number, and exactly 1 at y = 0 (a running max that does not move)."""
    n = 1_000_000
    rng = np.random.default_rng(1)
    y = np.concatenate([np.linspace(0, hi, n), rng.uniform(0, 5, n), rng.uniform(0, 1e-3, n)])
    y = y.astype(dtype)
    y = y[: len(y) - len(y) % 16]
    got = run(compiled_exp(dtype, mode, "exp_neg"), y)
    assert_exp_within_one_ulp(got, -y.astype(np.longdouble), dtype)
    assert np.all(got[y == 0] == 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,floor", [("float32", 87.3), ("float64", 708.3)])
def test_exp_neg_without_flushing(dtype, floor, mode):
    """flush=False: within 1 ulp up to the floor's argument, e^-floor (a normal number) beyond
    it and at +inf, NaN kept ("avx512" flushes to 0 anyway: its flush costs nothing)."""
    from tvmred import mathfns

    ex = compiled_exp(dtype, mode, lambda v, dt: mathfns.exp_neg(v, dt, flush=False))
    y = np.concatenate([np.linspace(0, floor, 100_000), [floor * 1.01, 1e6, np.inf, np.nan]])
    y = y.astype(dtype)
    y = np.concatenate([y, np.zeros(-len(y) % 16, dtype)])
    got = run(ex, y)
    floor = np.array(floor, dtype).astype(np.longdouble)  # as the kernel holds it
    ref = np.exp(-np.minimum(y.astype(np.longdouble), floor))
    if mode == "avx512":
        ref = np.exp(-y.astype(np.longdouble))
        ref[ref < np.finfo(dtype).tiny] = 0
    assert np.isnan(got[np.isnan(y)]).all() and not np.isnan(got[~np.isnan(y)]).any()
    ok = ~np.isnan(y)
    ulp = np.spacing(ref[ok].astype(dtype)).astype(np.longdouble)
    assert (np.abs(got[ok] - ref[ok]) / ulp).max() <= 1.0
    assert np.all((got[ok] == 0) | (got[ok] >= np.finfo(dtype).tiny))  # never a denormal


@pytest.mark.parametrize("mode", MODES)
def test_exp_neg_of_a_sum_term(mode):
    """term=True (float32): a relative error of at most 1.7e-7 + y 3e-9 over [0, 87.3] (ln 2
    in one constant, a degree-5 polynomial), exactly 1 at 0, e^-87.3 beyond (no flush), NaN
    kept; float64 is exp_neg's own (within 1 ulp)."""
    from tvmred import mathfns

    fn = lambda v, dt: mathfns.exp_neg(v, dt, flush=False, term=True)  # noqa: E731
    rng = np.random.default_rng(2)
    y = np.concatenate([np.linspace(0, 87.3, 500_000), rng.uniform(0, 5, 500_000)])
    y = np.concatenate([y, [0.0, 100.0, np.inf, np.nan]]).astype("float32")
    y = np.concatenate([y, np.zeros(-len(y) % 16, "float32")])
    got = run(compiled_exp("float32", mode, fn), y)
    ok = y <= np.float32(87.3)
    yl = y[ok].astype(np.longdouble)
    rel = np.abs(got[ok] - np.exp(-yl)) / np.exp(-yl)
    assert (rel - 3e-9 * yl).max() <= 1.7e-7
    assert np.all(got[y == 0] == 1) and np.isnan(got[np.isnan(y)]).all()
    beyond = (y > np.float32(87.3)) & ~np.isnan(y)
    floor = np.exp(-np.float32(87.3).astype(np.longdouble))
    want = 0.0 if mode == "avx512" else floor  # "avx512" flushes anyway
    assert np.all(np.abs(got[beyond] - want) <= floor * 1e-6)
    y64 = np.linspace(0, 700, 16 * 1000)  # float64: exp_neg's own, within 1 ulp
    ref64 = np.exp(-y64.astype(np.longdouble))
    ulp64 = np.spacing(ref64.astype("float64")).astype(np.longdouble)
    got64 = run(compiled_exp("float64", mode, fn), y64)
    assert (np.abs(got64 - ref64) / ulp64).max() <= 1.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_neg_special_values(dtype, mode):
    ex = compiled_exp(dtype, mode, "exp_neg")
    vals = [float("inf"), float("nan"), 1e6, 1e30, 0.0, -0.0, 1.0, 87.3, 708.3] + [0.5] * 7
    x = torch.tensor(vals, dtype=getattr(torch, dtype), device="cpu")
    y = torch.zeros_like(x)
    ex(x, y, len(vals) // 16)
    want = torch.exp(-x.double())
    want[want < torch.finfo(getattr(torch, dtype)).tiny] = 0  # flushed, as exp
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    ok = ~torch.isnan(want)
    torch.testing.assert_close(y.double()[ok], want[ok], rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_special_values(dtype, mode):
    ex = compiled_exp(dtype, mode)
    vals = [float("inf"), float("-inf"), float("nan"), 1e6, -1e6, 0.0, -0.0, 1.0] + [0.5] * 8
    x = torch.tensor(vals, dtype=getattr(torch, dtype), device="cpu")  # a CPU kernel
    y = torch.zeros_like(x)
    ex(x, y, len(vals) // 16)
    want = torch.exp(x.double())
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    ok = ~torch.isnan(want)
    torch.testing.assert_close(y.double()[ok], want[ok], rtol=1e-6, atol=0)


def test_cuda_float32_exp_bound():
    """CUDA float32 exp is exp2f(x * LOG2E_F32): log2(e) rounded to float32 and the product
    rounded to float32 each put at most |x| log2(e) 2^-24 into the exponent, i.e. |x| 2^-24
    relative error each, then exp2f is within 2 ulp (CUDA's documented bound): at most
    |x| 2^-23 + 2^-22 relative -- 4.8e-7 for |x| <= 2, 1.1e-5 at |x| = 88 (mathfns.exp).
    Emulated here in float64 (the GPU runs the suite's float32 comparisons on top)."""
    from tvmred import mathfns

    assert np.float32(mathfns.LOG2E_F32) == np.float32(np.log2(np.e))
    x = np.concatenate([np.linspace(-87.0, 88.0, 2_000_001), [-2.0, 2.0]]).astype(np.float32)
    t = (x * np.float32(mathfns.LOG2E_F32)).astype(np.float32)  # the product, in float32
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(np.exp2(t.astype(np.float64)) - exact) / exact + 2.0**-22  # + exp2f's 2 ulp
    assert np.all(rel <= np.abs(x.astype(np.float64)) * 2.0**-23 + 2.0**-22)
    assert rel[np.abs(x) <= 2].max() <= 4.8e-7 and rel.max() <= 1.1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log_of_positive_normal_numbers(dtype):
    """Within 1 ulp over the positive normal numbers and on [1, 3] (soft-DTW's
    sums of exponentials; near 1 the result is small: its ulp is small too), NaN kept."""
    ex = compiled_exp(dtype, "poly", "log")
    info = np.finfo(dtype)
    rng = np.random.default_rng(1)
    wide = np.exp(rng.uniform(np.log(info.tiny), np.log(info.max), 500_000))
    near = np.concatenate([np.linspace(1.0, 3.0, 500_000), 1 + rng.uniform(0, 1e-3, 10_000)])
    for x, bound in ((wide, 1.0), (near, 1.0)):
        x = np.append(x, [np.nan, 1.0, 2.0, np.sqrt(2)]).astype(dtype)
        x = x[: len(x) - len(x) % 16]
        y = torch.zeros(len(x), dtype=getattr(torch, dtype))
        ex(torch.from_numpy(x).clone(), y, len(x) // 16)
        got = y.numpy()
        assert np.isnan(got[np.isnan(x)]).all()
        ok = ~np.isnan(x)
        ref = np.log(x[ok].astype(np.longdouble))
        ulp = np.spacing(np.abs(ref).astype(dtype)).astype(np.longdouble)
        ulp[ref == 0] = np.finfo(dtype).tiny
        err = np.abs(got[ok].astype(np.longdouble) - ref) / ulp
        assert err.max() <= bound, (dtype, err.max(), x[ok][err.argmax()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "formula,never_positive",
    [
        ("Exp(-SqDist(x,y))", True),  # a Gaussian kernel
        ("Exp(SqNorm2(x-y)*(-0.5))", True),
        ("Exp(-Sum(Abs(x-y))/IntCst(3))", True),  # a Laplacian one
        ("Exp(Sum(x)-SqDist(x,y))", False),  # may be positive: e^x as ever
    ],
)
def test_exp_of_a_never_positive_argument(formula, never_positive, dtype, monkeypatch):
    """An Exp whose argument cannot be positive (ops.signs) is e^-y by mathfns.exp_neg (one
    clamp, 2^n in one piece) -- values as torch's exp, distances of 0, beyond the flush
    (e^-y below the smallest normal number is 0, as exp gives) and infinite included."""
    from tvmred import build, mathfns
    from tvmred.frontend import make_reduction
    from tvmred.torch import Genred

    aliases = ["x = Vi(3)", "y = Vj(3)"]
    calls = []
    real = mathfns.exp_neg
    monkeypatch.setattr(mathfns, "exp_neg", lambda *a, **k: calls.append(a) or real(*a, **k))
    r = make_reduction(formula, aliases, "Max", 1, "auto")
    build.compile_reduction(r.spec(str(dtype).split(".")[1]), cpu_target())
    assert bool(calls) == never_positive
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64) * 3
    y = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    x[1], x[2] = y[7], 1e3  # distance 0 (e^0), e^-1000 and less (flushed: 0)
    x[3] = torch.inf if never_positive else 30.0  # e^-inf (e^x's: e^(inf - inf) is NaN)
    x, y = x.to(dtype), y.to(dtype)
    got = Genred(formula, aliases, reduction_op="Max", axis=1)(x, y).double()
    x, y = x.double(), y.double()  # the reference from the same (rounded) inputs
    a = x[:, None, :] - y[None]
    if formula.startswith("Exp(Sum(x)"):
        arg = x.sum(1)[:, None] - (a**2).sum(2)
    elif "Abs" in formula:
        arg = -a.abs().sum(2) / 3
    else:
        arg = -(a**2).sum(2) * (0.5 if "0.5" in formula else 1.0)
    want, at = torch.exp(arg).max(1, keepdim=True)
    # exp within 1 ulp, of an argument rounded in dtype: |arg| eps more (relative)
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny  # below tiny: 0 (the flush)
    bound = want * 4 * eps * (1 + arg.gather(1, at).abs().nan_to_num(0)) + tiny
    assert ((got - want).abs() <= bound).all(), (got - want).abs().max()
    assert got[2].item() == 0.0 and got[3].item() == want[3].item()
    assert got[1].item() == 1.0 or not never_positive


@pytest.mark.parametrize("g", [0.5, 0.0, 1e30, math.inf, -0.0, -0.5, math.nan])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_of_minus_a_nonnegative_parameter_times_a_distance(g, dtype):
    """Exp(-g*SqDist(x,y)) with a parameter g: a CPU call that finds g +0 or more takes the
    kernel that computes it as e^-y (launch.nonneg_params); -0, negatives and NaN the general
    one.  Values as torch's, distances of 0 and flushed results included."""
    from tvmred import launch
    from tvmred.torch import Genred

    f = Genred(
        "Exp(-g*SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)", "g = Pm(1)"], axis=1
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    b = torch.rand(50, 1, generator=gen, dtype=torch.float64)
    x[1] = y[7]  # a distance of 0: e^-(g * 0)
    args = [t.to(dtype) for t in (x, y, b, torch.tensor([g], dtype=torch.float64))]
    fast = g >= 0 and math.copysign(1.0, g) > 0
    assert launch.nonneg_params(f.reduction, args, args[0].device) == ((3,) if fast else ())
    got = f(*args).double()
    x, y, b, gt = (t.double() for t in args)
    arg = -gt * ((x[:, None] - y[None]) ** 2).sum(2)
    want = torch.exp(arg) @ b
    # each term within a few ulps of e^arg for an argument rounded in dtype (|arg| eps more)
    eps = torch.finfo(dtype).eps
    bound = 8 * eps * ((torch.exp(arg) * (1 + arg.abs())).nan_to_num(0) @ b)
    ok = (got - want).abs() <= bound + torch.finfo(dtype).tiny
    assert bool((ok | (got.isnan() & want.isnan())).all()), (got - want).abs().max()


def test_a_nonnegative_parameter_kernel_uses_exp_neg(monkeypatch):
    """The kernel variant for a parameter known +0 or more computes its Exp as e^-y; the
    general kernel does not (g's sign unknown)."""
    from tvmred import build, mathfns
    from tvmred.frontend import make_reduction

    calls = []
    real = mathfns.exp_neg
    monkeypatch.setattr(mathfns, "exp_neg", lambda *a, **k: calls.append(a) or real(*a, **k))
    al = ["x = Vi(3)", "y = Vj(3)", "g = Pm(1)"]
    r = make_reduction("Exp(-g*SqDist(x,y))", al, "Sum", 1, "auto")
    build.compile_reduction(r.spec("float32"), cpu_target())
    assert calls == []
    build.compile_reduction(r.spec("float32", nonneg=(2,)), cpu_target())
    assert calls
