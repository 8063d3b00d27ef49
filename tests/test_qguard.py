"""The dot-product guard with 16-bit integer dot products (schedules/guard_dots.py,
normguard.int16_args): its lower bound against float64 distances on data that stresses the
quantization (outliers, points far from the origin, mixed scales, ties, tiny values), the
answers of the kernel against the unguarded kernel bit for bit and against float64, the
machine code it emits for CPUs with AVX-512 VNNI, AVX2 or neither, and where a call takes
it."""

import numpy as np
import pytest
import torch

from tvmred import build, normguard, schedules
from tvmred.arrays import xp
from tvmred.numpy import Genred as NumpyGenred
from tvmred.torch import Genred

K = 7
CPU = torch.device("cpu")
KINDS = ["normal", "offset", "outlier", "mixed", "ties", "grid", "small"]


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The guard at every size, with integer dot products on every CPU and for any data
    (the launch's rules have their own test below); a kernel for a CPU without VNNI keeps
    the float guard's test, reading the integer guard's arguments."""
    monkeypatch.setattr(schedules.cpu, "GUARD_MAX_SHARE", 1.0)
    monkeypatch.setattr(normguard, "int16", lambda *a: True)
    monkeypatch.setattr(normguard, "MAX_MARGIN", float("inf"))


def _data(kind: str, m: int, n: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, dim, generator=g, dtype=torch.float64)
    y = torch.randn(n, dim, generator=g, dtype=torch.float64)
    if kind == "offset":  # coarse steps: |x| ~ 300 beside distances ~ 1e-2
        x, y = 300 + 1e-2 * x, 300 + 1e-2 * y
    elif kind == "outlier":  # one value sets the scale of every other
        y[3, 5] = 1e4
    elif kind == "mixed":  # dimensions of scales 1e-3 .. 1e3
        s = torch.logspace(-3, 3, dim, dtype=torch.float64)
        x, y = x * s, y * s
    elif kind == "ties":
        y = y[torch.arange(n) % 17]
        x[:5] = y[3]
    elif kind == "grid":
        x, y = torch.round(2 * x), torch.round(2 * y)
    elif kind == "small":  # large scales (sx ~ 1e12); much smaller points: no integer guard
        x, y = 1e-9 * x, 1e-9 * y
    elif kind == "tiny":
        x, y = 1e-19 * x, 1e-19 * y
    return x.float(), y.float()


def _bound(x, y):
    """The guard's lower bound of every |x_i - y_j|^2 from int16_args' arguments, in
    float64 (the kernel's float32 rounding is the float guard's, tested there), and the
    float64 distances."""
    yh, xh = y.numpy(), x.numpy()
    sq = np.einsum("ij,ij->i", yh, yh)
    ny, _, yq, qc = normguard.int16_args(xp(y), y, yh, xh, sq)
    dim, u, eta = x.shape[1], 2.0**-24, 2.0**-90  # eta: the guard's absolute slack
    sx, c1, c2, c3 = (float(v) for v in qc.numpy())
    yw = yq.numpy().view(np.int16)[:, :dim].astype(np.int64)
    assert np.abs(yw).max() <= 2 ** normguard.bits(dim) - 1
    xq = np.rint((xh * np.float32(sx)).astype(np.float32)).astype(np.int64)  # as the kernel
    assert np.abs(xq).max() <= 2 ** normguard.bits(dim) - 1
    dot = (xq @ yw.T).astype(np.float64)
    x64, y64 = xh.astype(np.float64), yh.astype(np.float64)
    d = 8 * (dim + 4) * u
    nx = (x64**2).sum(1) * (1 - d) - (np.abs(x64).sum(1) * c2 + c3)
    low = ny.numpy()[:, 0].astype(np.float64)[None] - dot * c1 + nx[:, None] - eta
    exact = ((x64[:, None, :] - y64[None, :, :]) ** 2).sum(-1)
    return low, exact


@pytest.mark.parametrize("dim", [24, 25, 64, 130])
@pytest.mark.parametrize("kind", KINDS)
def test_the_integer_bound_is_below_every_distance(kind, dim):
    x, y = _data(kind, 40, 300, dim, seed=dim)
    low, exact = _bound(x, y)
    assert (low <= exact).all(), (low - exact).max()
    if kind == "normal":  # and close: a fraction of a percent of the distances
        assert (exact - low).max() < 0.01 * exact.mean()


def test_bits_keep_the_integer_sums_in_int32():
    for dim in [1, 2, 3, 24, 25, 64, 128, 129, 1000, 4096]:
        b, pairs = normguard.bits(dim), dim + dim % 2
        assert pairs * (2**b - 1) ** 2 <= 2**31 - 1
        assert b == 15 or pairs * (2 ** (b + 1) - 1) ** 2 > 2**31 - 1


@pytest.mark.parametrize("dim", [24, 64, 130])
@pytest.mark.parametrize("kind", KINDS)
def test_integer_guarded_knn_is_the_exact_search(kind, dim, monkeypatch):
    x, y = _data(kind, 300, 1001, dim, seed=dim + 1)
    al = [f"x=Vi({dim})", f"y=Vj({dim})"]
    g = Genred("SqDist(x,y)", al, reduction_op="KMin_ArgKMin", axis=1, opt_arg=K)
    vals, idx = g(x, y)
    assert ("kernel", "float32", CPU, False, (), "guard", "int16") in g.reduction.memo
    d = ((x.double()[:, None, :] - y.double()[None, :, :]) ** 2).sum(-1)
    got, want = d.gather(1, idx).sort(dim=1).values, d.topk(K, dim=1, largest=False).values
    scale = (x.double() ** 2).sum(1, keepdim=True) + (y.double() ** 2).sum(1).max()
    atol = float(64 * dim * torch.finfo(torch.float32).eps * scale.max())
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    monkeypatch.setattr(schedules.cpu, "GUARD_MIN_DIM", 10**9)  # the unguarded kernel
    vals2, idx2 = Genred("SqDist(x,y)", al, reduction_op="KMin_ArgKMin", axis=1, opt_arg=K)(x, y)
    assert torch.equal(idx, idx2) and torch.equal(vals, vals2)  # the same answer, bit for bit


@pytest.mark.parametrize("dim", [24, 64])
@pytest.mark.parametrize("kind", ["normal", "offset", "ties", "small"])
def test_integer_guarded_nearest_is_the_exact_search(kind, dim, monkeypatch):
    """Min_ArgMin (a k-means assignment) with the integer guard: the unguarded kernel's
    answer bit for bit, the nearest distance against float64."""
    x, y = _data(kind, 300, 1001, dim, seed=dim + 2)
    al = [f"x=Vi({dim})", f"y=Vj({dim})"]
    g = Genred("SqDist(x,y)", al, reduction_op="Min_ArgMin", axis=1)
    val, idx = g(x, y)
    assert ("kernel", "float32", CPU, False, (), "guard", "int16") in g.reduction.memo
    d = ((x.double()[:, None, :] - y.double()[None, :, :]) ** 2).sum(-1)
    scale = (x.double() ** 2).sum(1, keepdim=True) + (y.double() ** 2).sum(1).max()
    atol = float(64 * dim * torch.finfo(torch.float32).eps * scale.max())
    torch.testing.assert_close(d.gather(1, idx), d.min(1, keepdim=True).values, rtol=0, atol=atol)
    monkeypatch.setattr(schedules.cpu, "GUARD_MIN_DIM", 10**9)  # the unguarded kernel
    val2, idx2 = Genred("SqDist(x,y)", al, reduction_op="Min_ArgMin", axis=1)(x, y)
    assert torch.equal(idx, idx2) and torch.equal(val, val2)


@pytest.mark.parametrize("m,n", [(1, 5), (17, 9), (33, 4099)])
def test_odd_sizes_and_numpy(m, n):
    """Row blocks and steps of j cut short; the numpy binding's host arrays."""
    x, y = _data("normal", m, n, 32, seed=m)
    g = NumpyGenred("SqDist(x,y)", ["x=Vi(32)", "y=Vj(32)"], reduction_op="ArgKMin", axis=1,
                    opt_arg=K)  # fmt: skip
    idx = g(x.numpy(), y.numpy())
    d = torch.cdist(x.double(), y.double())
    want = d.sort(dim=1, stable=True).indices[:, :K]
    k = min(K, n)
    np.testing.assert_array_equal(idx[:, :k], want[:, :k].numpy())
    assert (idx[:, k:] == -1).all()


@pytest.mark.parametrize("mcpu", ["cascadelake", "znver4", "skylake-avx512", "znver3", "haswell"])
def test_the_integer_loop_is_built_for_the_cpu(mcpu):
    """vpdpwssd in the guarded kernel exactly where the target has AVX-512 VNNI, vpmaddwd
    where it has AVX2 and not AVX-512 (LLVM's feature lists for the CPU names); AVX-512
    without VNNI keeps the float guard's test (still correct)."""
    from tvmred.schedules import guard_dots

    r = Genred("SqDist(x,y)", ["x=Vi(64)", "y=Vj(64)"], reduction_op="ArgKMin", axis=1,
               opt_arg=K).reduction  # fmt: skip
    target = {"kind": "llvm", "mcpu": mcpu}
    ex, _ = build.compile_reduction(r.spec("float32", guard="int16"), target)
    asm = ex.mod.inspect_source("asm")
    isa = guard_dots.int16_isa(target)
    assert isa == {"cascadelake": ("vnni", 512), "znver4": ("vnni", 512),
                   "skylake-avx512": None}.get(mcpu, ("pmadd", 256))  # fmt: skip
    assert ("vpdpwssd" in asm) == (isa == ("vnni", 512))
    assert ("vpmaddwd" in asm) == (isa == ("pmadd", 256))


def test_where_a_call_takes_the_integer_guard(monkeypatch):
    monkeypatch.undo()  # the launch's own rule
    from tvmred import targets
    from tvmred.frontend import make_reduction

    def r(dim, red="ArgKMin", k=K):
        return make_reduction("SqDist(x,y)", [f"x=Vi({dim})", f"y=Vj({dim})"], red, 1, "auto", k)

    for flags, env, want in (
        (["avx512f", "avx512_vnni", "avx2"], None, True),
        (["avx512f", "avx2"], None, False),  # AVX-512 without VNNI: no gain predicted
        (["avx2"], None, True),
        ([], None, False),
        (["avx512f", "avx512_vnni", "avx2"], "haswell", True),  # the kernel's pass decides
        (["asimd"], "neoverse-v1", False),
    ):
        monkeypatch.setattr(targets, "host_flags", lambda f=flags: frozenset(f))
        if env:
            monkeypatch.setenv("TVMRED_LLVM_MCPU", env)
        else:
            monkeypatch.delenv("TVMRED_LLVM_MCPU", raising=False)
        d = normguard.INT16_MIN_DIM
        assert normguard.int16(r(d), "float32", d) == want
        assert not normguard.int16(r(d), "float64", d)
        assert not normguard.int16(r(d - 1), "float32", d - 1)
        assert normguard.int16(r(d, "ArgMin", None), "float32", d) == want


def test_coarse_steps_keep_the_float_guard(monkeypatch):
    """Points far from the origin, an outlier: the integer margin would be most of the
    distances, so int16_args declines (the call keeps the float guard), as for points whose
    scales' product would overflow float32; Gaussian points take it."""
    monkeypatch.undo()  # MAX_MARGIN's own value
    for kind, want in (("offset", None), ("outlier", None), ("tiny", None), ("normal", 4)):
        x, y = _data(kind, 50, 2000, 64)
        yh = y.numpy()
        sq = np.einsum("ij,ij->i", yh, yh)
        got = normguard.int16_args(xp(y), y, yh, x.numpy(), sq)
        assert (got if got is None else len(got)) == want
