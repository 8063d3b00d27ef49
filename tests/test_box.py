"""The box test of low-dimensional K-min searches (schedules/box.py): the kernel with it gives
the unguarded kernel's answers bit for bit, and the float64 search's, on data that stresses it
(clusters, duplicated points, grids of equal distances, points far from the origin or tiny,
reduced rows not a multiple of the test's width, fewer than it); the machine code per CPU; the
caller's blocks; and which calls take it.  The kernels are built for 256-bit CPUs (``haswell``:
every CI machine runs them), so the pass is exercised whatever the machine's vectors."""

import numpy as np
import pytest
import torch

from tvmred import build, launch, locality, normguard, schedules, targets
from tvmred.frontend import make_reduction
from tvmred.numpy import Genred as NumpyGenred
from tvmred.torch import Genred

CPU = torch.device("cpu")
AVX2 = {"kind": "llvm", "mcpu": "haswell"}
K = 5
_BUILT: dict = {}


def _kernel(red: str, dim: int, dtype: str, box: bool, target: dict = AVX2):
    """(reduction, kernel) for ``target``, built once per test session."""
    key = (red, dim, dtype, box, target["mcpu"])
    if key not in _BUILT:
        k = K if "K" in red else None
        r = make_reduction("SqDist(x,y)", [f"x=Vi({dim})", f"y=Vj({dim})"], red, 1, "auto", k)
        spec = r.spec(dtype, guard="box" if box else False)
        ex, meta = build.compile_reduction(spec, target)
        kern = build.make_kernel(ex.mod["main"], spec, meta["row_block"], None, meta["tile"])
        _BUILT[key] = (r, kern, ex.mod)
    return _BUILT[key]


def _data(kind: str, m: int, n: int, dim: int, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, dim, generator=g, dtype=torch.float64)
    y = torch.rand(n, dim, generator=g, dtype=torch.float64)
    if kind == "normal":
        x, y = torch.randn(m, dim, generator=g, dtype=torch.float64), torch.randn_like(y)
    elif kind == "clusters":  # tight clusters, far apart
        c = 100 * torch.rand(7, dim, generator=g, dtype=torch.float64)
        x = c[torch.arange(m) % 7] + 1e-3 * x
        y = c[torch.arange(n) % 7] + 1e-3 * y
    elif kind == "duplicates":  # repeated points: equal distances, lowest index first
        y = y[torch.arange(n) % 13]
        x[: m // 2] = y[torch.arange(m // 2) % min(n, 13)]
    elif kind == "grid":  # small integers: many exactly equal distances
        x, y = torch.round(8 * x), torch.round(8 * y)
    elif kind == "offset":  # far from the origin, close to each other
        x, y = 1e4 + 1e-2 * x, 1e4 + 1e-2 * y
    elif kind == "tiny":  # squares near the float32 underflow
        x, y = 1e-19 * x, 1e-19 * y
    x = x[torch.from_numpy(locality.curve_order([x.numpy()]))]  # as the launch orders rows
    return x.to(dtype).contiguous(), y.to(dtype).contiguous()


def _states(red: str, x, y, box: bool):
    dtype = str(x.dtype)[6:]
    r, kern, _ = _kernel(red, x.shape[1], dtype, box)
    args = [x, y]
    if box:
        assert normguard.candidate(r, dtype, CPU, len(y), None, 10**9) in ("box", False)
        blocks = normguard.guard_norms(r, args, dtype, CPU, kern.row_block, len(y), "box")
        assert blocks is not None and len(blocks) == 1
        args = [*args, *blocks]
    return [s[: len(x)] for s in launch.launch(r, kern, args, len(x), len(y), 1, CPU)]


@pytest.fixture(autouse=True)
def _avx2_host(monkeypatch):
    """A host with AVX2 for the launch's rule (its own test below)."""
    monkeypatch.setattr(targets, "host_flags", lambda: frozenset(["avx2"]))
    monkeypatch.delenv("TVMRED_LLVM_MCPU", raising=False)


KINDS = ["uniform", "normal", "clusters", "duplicates", "grid", "offset", "tiny"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 3, 6])
def test_the_box_kernel_is_the_exact_search(dim, dtype):
    for kind in KINDS:
        for m, n in ((300, 1001), (64, 5), (40, 64), (500, 3000)):
            x, y = _data(kind, m, n, dim, dtype)
            got = _states("KMin_ArgKMin", x, y, True)  # K value columns, then K indices
            plain = _states("KMin_ArgKMin", x, y, False)
            assert all(torch.equal(a, b) for a, b in zip(got, plain)), (kind, m, n)
            idx = torch.cat(got[K:], 1)
            d = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
            k = min(K, n)
            want = d.sort(dim=1, stable=True).values[:, :k]
            got = d.gather(1, idx[:, :k].long())
            eps = torch.finfo(dtype).eps
            scale = float((x.double() ** 2).sum(1).max() + (y.double() ** 2).sum(1).max())
            tol = 64 * dim * eps * scale + float(torch.finfo(dtype).tiny)
            torch.testing.assert_close(got, want, rtol=0, atol=tol)
            assert (idx[:, k:] == -1).all() and (idx[:, :k] >= 0).all()


@pytest.mark.parametrize("red", ["KMin", "ArgKMin"])
def test_kmin_and_argkmin_alone(red):
    x, y = _data("uniform", 700, 2500, 3, torch.float32, seed=3)
    for got, want in zip(_states(red, x, y, True), _states(red, x, y, False)):
        assert torch.equal(got, want)


def test_the_pass_emits_its_test_for_avx_cpus():
    """The box test's visit of the passing lanes (a tzcnt of its mask) in the kernel for CPUs
    with AVX2 or AVX-512 (the mask: vmovmskps of 256-bit halves); SSE2 keeps the plain
    kernel."""
    for mcpu, want in (("haswell", True), ("znver3", True), ("skylake-avx512", True),
                       ("znver4", True), ("x86-64", False)):  # fmt: skip
        _, _, mod = _kernel("ArgKMin", 3, "float32", True, {"kind": "llvm", "mcpu": mcpu})
        asm = mod.inspect_source("asm")
        assert ("tzcnt" in asm) == want, mcpu
    _, _, plain = _kernel("ArgKMin", 3, "float32", False)
    assert "tzcnt" not in plain.inspect_source("asm")


def test_the_callers_blocks():
    """Each value of W consecutive reduced rows contiguous (W: BOX_BYTES of values), the last
    N mod W rows as they are; points that could overflow, or NaN, decline the box (general
    kernel)."""
    r, kern, _ = _kernel("ArgKMin", 3, "float32", True)
    y = torch.randn(1000, 3)
    x = torch.randn(50, 3)
    (blocks,) = normguard.guard_norms(r, [x, y], "float32", CPU, kern.row_block, 1000, "box")
    w = schedules.cpu.cpu_box_guard("ArgKMin", 3, "float32", K)
    assert w == schedules.cpu.BOX_BYTES // 4 and 1000 % w
    nb = 1000 // w
    flat = blocks.reshape(-1)
    want = y[: nb * w].reshape(nb, w, 3).transpose(1, 2).reshape(-1)
    assert torch.equal(flat[: nb * w * 3], want)
    assert torch.equal(flat[nb * w * 3 :], y[nb * w :].reshape(-1))
    for bad in (float("nan"), 3e19):
        y2 = y.clone()
        y2[7, 1] = bad
        assert normguard.guard_norms(r, [x, y2], "float32", CPU, 16, 1000, "box") is None
    assert schedules.cpu.cpu_box_guard("ArgKMin", 3, "float64", K) == schedules.cpu.BOX_BYTES // 8


def test_which_calls_take_the_box(monkeypatch):
    def cand(dim=3, red="ArgKMin", k=10, dtype="float32", m=10**5, n=10**5):
        r = make_reduction("SqDist(x,y)", [f"x=Vi({dim})", f"y=Vj({dim})"], red, 1, "auto", k)
        return normguard.candidate(r, dtype, CPU, n, None, m)

    assert cand() == "box"
    assert cand(red="KMin") == "box" and cand(red="KMin_ArgKMin") == "box"
    assert cand(dtype="float64") == "box" and cand(dim=1) == "box"
    assert cand(dim=schedules.cpu.BOX_MAX_DIM) == "box"
    assert not cand(dim=schedules.cpu.BOX_MAX_DIM + 1)
    assert not cand(k=schedules.cpu.KSELECT_K + 1)
    assert not cand(red="ArgMin", k=None)
    assert not cand(dtype="float16")
    big = schedules.cpu.BOX_MIN_ROWS
    assert cand(m=big, n=big) == "box"
    assert not cand(m=big - 1) and not cand(n=big - 1)  # the K-lists' first j: most of it
    r = make_reduction("Sqrt(SqDist(x,y))", ["x=Vi(3)", "y=Vj(3)"], "ArgKMin", 1, "auto", 10)
    assert not normguard.candidate(r, "float32", CPU, 10**5, None, 10**5)
    for flags, env, want in (
        (["avx512f", "avx2"], None, "box"),
        (["avx512f", "avx2"], "x86-64", "box"),  # kernels for another CPU: its pass decides
        (["sse2"], None, False),
        ([], None, False),
    ):
        monkeypatch.setattr(targets, "host_flags", lambda f=flags: frozenset(f))
        if env:
            monkeypatch.setenv("TVMRED_LLVM_MCPU", env)
        else:
            monkeypatch.delenv("TVMRED_LLVM_MCPU", raising=False)
        assert cand() == want, (flags, env)


@pytest.mark.parametrize("binding", ["torch", "numpy"])
def test_calls_through_the_bindings(binding):
    """The launch's path (rows put in a curve's order and back, the blocks built per call)
    on the running CPU's kernels, against float64, and with NaN points (the general kernel)."""
    big = schedules.cpu.BOX_MIN_ROWS
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(big + 8, 3, generator=g), torch.rand(big + 9, 3, generator=g)
    al = ["x=Vi(3)", "y=Vj(3)"]
    for nan in (False, True):
        yy = torch.where(torch.arange(len(y))[:, None] == 11, float("nan"), y) if nan else y
        if binding == "torch":
            gen = Genred("SqDist(x,y)", al, reduction_op="ArgKMin", opt_arg=K, axis=1)
            idx = gen(x, yy)
        else:
            gen = NumpyGenred("SqDist(x,y)", al, reduction_op="ArgKMin", opt_arg=K, axis=1)
            idx = torch.from_numpy(gen(x.numpy(), yy.numpy()))
        keys = [k for k in gen.reduction.memo if isinstance(k, tuple) and k[0] == "kernel"]
        taken = ["box" if k[-2:] == ("guard", "box") else "guard" in k for k in keys]
        assert taken == ["box", False] if nan else ["box"]  # NaN: then the general kernel
        for rows in torch.arange(len(x)).split(1024):  # float64 distances, 1024 rows at a time
            d = ((x[rows].double()[:, None] - yy.double()[None]) ** 2).sum(-1)
            d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
            want = d.sort(dim=1, stable=True).values[:, :K]
            got = d.gather(1, idx[rows].long())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not (nan and np.isin(11, idx.numpy()))
