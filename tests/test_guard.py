"""The dot-product guard of CPU K-nearest-neighbour kernels (schedules/guard.py): which calls
take it, and that their answers are the exact search's -- against float64 distances, and
against the unguarded kernel bit for bit -- on data that stresses its error bound (points far
from the origin and close to each other, ties, tiny values, odd N, both axes)."""

import pytest
import torch

from tvmred import build, normguard, schedules
from tvmred.frontend import make_reduction
from tvmred.numpy import Genred as NumpyGenred
from tvmred.torch import Genred, LazyTensor

D = 64  # guarded on every CPU (GUARD_MIN_DIM; test_the_pass_follows_its_rule checks it)
K = 7
CPU = torch.device("cpu")
SHARE = schedules.cpu.GUARD_MAX_SHARE  # the policy's bound (the fixture below lifts it)


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The guard at every size (the policy that it pays: its own test below), so that small
    problems test the guarded kernel's answers."""
    monkeypatch.setattr(schedules.cpu, "GUARD_MAX_SHARE", 1.0)


def _data(kind: str, m: int, n: int, dtype, seed: int = 0, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, dim, generator=g, dtype=torch.float64)
    y = torch.randn(n, dim, generator=g, dtype=torch.float64)
    if kind == "offset":  # |x|^2 ~ 6e6 beside distances ~ 1e-2: the bound's margin matters
        x, y = 300 + 1e-2 * x, 300 + 1e-2 * y
    elif kind == "ties":  # repeated points: equal distances, lowest index first
        y = y[torch.arange(n) % 17]
        x[:5] = y[3]
    elif kind == "tiny":  # squares near float32's underflow
        x, y = 1e-19 * x, 1e-19 * y
    elif kind == "grid":  # small integers: many exactly equal distances
        x, y = torch.round(2 * x), torch.round(2 * y)
    return x.to(dtype), y.to(dtype)


def _norms(r, args, dtype):
    """The guarded kernel's extra arguments for this call, or None (not a candidate, or
    norms that could overflow), as ``launch.call_kernel`` gets them (rows: any)."""
    n = len(args[r.memo["sqdist"][0]]) if normguard.candidate(r, dtype, CPU, 10**9) else 0
    return normguard.guard_norms(r, args, dtype, CPU, 8, n) if n else None


def _check_knn(idx, x, y):
    """``idx`` (m, K) are nearest neighbours by float64 distances, up to the rounding of
    the kernel's own float32/64 arithmetic (a swap of two near-equal distances)."""
    d = torch.cdist(x.double(), y.double()) ** 2
    got = d.gather(1, idx.long()).sort(dim=1).values
    want = d.topk(K, dim=1, largest=False).values
    eps = torch.finfo(x.dtype).eps
    scale = (x.double() ** 2).sum(1, keepdim=True) + (y.double() ** 2).sum(1).max()
    atol = float(64 * x.shape[1] * eps) * scale.max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    assert (idx >= 0).all() and (idx < len(y)).all()


# the smallest guarded dimension (the rule's edge: AVX-512 one-vector blocks from there)
DIMS = [schedules.cpu.GUARD_MIN_DIM, D]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", ["normal", "offset", "ties", "tiny", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guarded_knn_is_the_exact_search(kind, dtype, dim, monkeypatch):
    x, y = _data(kind, 300, 1001, dtype, dim=dim)
    al = [f"x=Vi({dim})", f"y=Vj({dim})"]
    r = make_reduction("SqDist(x,y)", al, "ArgKMin", 1, "auto", K)
    assert _norms(r, [x, y], str(dtype)[6:]) is not None
    g = Genred("SqDist(x,y)", al, reduction_op="KMin_ArgKMin", axis=1, opt_arg=K)
    vals, idx = g(x, y)
    _check_knn(idx, x, y)
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)  # dense, in the data's dtype
    torch.testing.assert_close(vals, d.gather(1, idx), rtol=64 * dim * torch.finfo(dtype).eps,
                               atol=float(torch.finfo(dtype).tiny))  # fmt: skip
    monkeypatch.setattr(schedules.cpu, "GUARD_MIN_DIM", 10**9)  # the unguarded kernel
    g2 = Genred("SqDist(x,y)", al, reduction_op="KMin_ArgKMin", axis=1, opt_arg=K)
    vals2, idx2 = g2(x, y)
    assert torch.equal(idx, idx2) and torch.equal(vals, vals2)  # the same answer, bit for bit


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("kind", ["normal", "offset", "ties", "tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guarded_nearest_is_the_exact_search(kind, dtype, dim, monkeypatch):
    """Min_ArgMin (a k-means assignment) takes the guard too: nearest index and distance
    against float64, and the unguarded kernel's answer bit for bit; Min and ArgMin alone."""
    x, y = _data(kind, 300, 1001, dtype, seed=1, dim=dim)
    al = [f"x=Vi({dim})", f"y=Vj({dim})"]
    r = make_reduction("SqDist(x,y)", al, "Min_ArgMin", 1, "auto", None)
    assert _norms(r, [x, y], str(dtype)[6:]) is not None
    outs = {red: Genred("SqDist(x,y)", al, reduction_op=red, axis=1)(x, y)
            for red in ("Min_ArgMin", "ArgMin", "Min")}  # fmt: skip
    val, idx = outs["Min_ArgMin"]
    d = torch.cdist(x.double(), y.double()) ** 2
    want = d.min(1, keepdim=True).values
    got = d.gather(1, idx.long())
    eps = torch.finfo(dtype).eps
    scale = (x.double() ** 2).sum(1, keepdim=True) + (y.double() ** 2).sum(1).max()
    torch.testing.assert_close(got, want, rtol=0, atol=float(64 * dim * eps * scale.max()))
    assert torch.equal(outs["ArgMin"], idx) and torch.equal(outs["Min"], val)
    monkeypatch.setattr(schedules.cpu, "GUARD_MIN_DIM", 10**9)  # the unguarded kernel
    val2, idx2 = Genred("SqDist(x,y)", al, reduction_op="Min_ArgMin", axis=1)(x, y)
    assert torch.equal(idx, idx2) and torch.equal(val, val2)


@pytest.mark.parametrize("n", [1, 2, 3, 64])
def test_short_and_odd_reduced_ranges(n):
    """The j loop runs in pairs: N = 1, 2, 3 (K > N: -1 / inf past N), and an even N."""
    x, y = _data("normal", 70, n, torch.float32, seed=n)
    g = Genred("SqDist(y,x)", [f"x=Vi({D})", f"y=Vj({D})"], reduction_op="ArgKMin",
               axis=1, opt_arg=K)  # fmt: skip
    idx = g(x, y)
    d = torch.cdist(x.double(), y.double())
    want = d.sort(dim=1, stable=True).indices[:, :K]
    if n < K:  # the rest: -1 (no such neighbour), as the exact kernel
        want = torch.cat([want, torch.full((70, K - n), -1)], 1)
    assert torch.equal(idx, want)


def test_axis_0_lazytensor_and_numpy_take_the_guard():
    x, y = _data("offset", 260, 90, torch.float32, seed=3)
    # LazyTensor, ((x - y)**2).sum(-1) (Sum(Square(...))), reduced over i
    xi, yj = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    idx = ((xi - yj) ** 2).sum(-1).argKmin(K, dim=0)  # (90, K): nearest x of each y
    _check_knn(idx, y, x)
    r = make_reduction("Sum(Square(x-y))", [f"x=Vi({D})", f"y=Vj({D})"], "ArgKMin", 0, "auto", K)
    assert normguard.sqdist_of(r) == (0, 1, D)  # reduced over i: x is the reduced variable
    g = NumpyGenred("SqDist(x,y)", [f"x=Vi({D})", f"y=Vj({D})"], reduction_op="ArgKMin",
                    axis=1, opt_arg=K)  # fmt: skip
    _check_knn(torch.from_numpy(g(x.numpy(), y.numpy())), x, y)


def test_which_calls_take_the_guard():
    def norms(formula, red="ArgKMin", dim=D, dtype=torch.float32, scale=1.0, k=K):
        r = make_reduction(formula, [f"x=Vi({dim})", f"y=Vj({dim})"], red, 1, "auto",
                           k if "K" in red else None)  # fmt: skip
        x = scale * torch.randn(40, dim, dtype=dtype)
        return _norms(r, [x, torch.randn(50, dim, dtype=dtype)], str(dtype)[6:])

    assert norms("SqDist(x,y)") is not None
    assert norms("SqDist(y,x)", red="KMin") is not None
    assert norms("Sum(Square(x-y))", red="KMin_ArgKMin") is not None
    ny, again = norms("SqDist(x,y)", dtype=torch.float64)
    assert ny.shape == (50, 1) and ny.dtype == torch.float64 and again.shape == (50, D)
    assert norms("SqDist(x,y)", dim=schedules.cpu.GUARD_MIN_DIM - 1) is None  # below the rule
    assert norms("SqDist(x,y)", red="Min_ArgMin") is not None
    assert norms("SqDist(x,y)", red="Max") is None  # not a smallest-value selection
    assert norms("SqDist(x,y)", red="Sum") is None
    assert norms("Sqrt(SqDist(x,y))") is None  # not a squared distance
    assert norms("SqDist(x,2*y)") is None
    assert norms("SqDist(x,y)", dtype=torch.float16) is None  # half: the bound needs f32/64
    assert norms("SqDist(x,y)", scale=1e19) is None  # squared norms overflow: general kernel


def test_overflowing_and_nan_points_keep_the_exact_answer():
    x, y = _data("normal", 100, 300, torch.float32, seed=5)
    x[3, 0] = 3e19  # |x_3|^2 overflows float32: the general kernel, not the guard ...
    y[7] = x[3]  # ... which would miss y 7, at distance 0 from x 3
    y[11, 2] = float("nan")  # never picked
    g = Genred("SqDist(x,y)", [f"x=Vi({D})", f"y=Vj({D})"], reduction_op="ArgKMin",
               axis=1, opt_arg=K)  # fmt: skip
    idx = g(x, y)
    d = ((x.double()[:, None] - y.double()[None]) ** 2).sum(-1)
    d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
    want = d.sort(dim=1, stable=True).indices[:, :K]
    ok = torch.ones(100, dtype=torch.bool)
    ok[3] = False  # row 3's other distances overflow float32 (inf: never inserted, -1)
    assert torch.equal(idx[ok], want[ok])
    assert idx[3, 0] == 7 and (idx[3, 1:] == -1).all()


@pytest.mark.parametrize("dim", [schedules.cpu.GUARD_MIN_DIM, 32, D])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("red", ["ArgKMin", "ArgMin"])
@pytest.mark.parametrize("formula", ["SqDist(x,y)", "Sum(Square(y-x))"])
def test_the_pass_follows_its_rule(dim, dtype, red, formula):
    """The guarded spec's kernel has the guard at every dimension the launch asks for it
    (GUARD_MIN_DIM up), in row blocks of the template's rule: one vector for a K-selection
    where the target's vectors are GUARD_ONE_VECTOR_BITS wide, the unguarded kernel's
    block otherwise -- from the same target the build uses -- and a dot-product loop whose
    step x chains x registers a row-block vector is MIN_CHAINS multiply-adds or more."""
    import re

    from tvm import s_tir

    from tvmred.build import row_block_for
    from tvmred.lower import lower
    from tvmred.schedules.cpu import (
        GUARD_MIN_DIM,
        GUARD_ONE_VECTOR_BITS,
        vector_lanes,
        vector_registers,
    )
    from tvmred.schedules.guard import MIN_CHAINS
    from tvmred.targets import cpu_target

    t = cpu_target()
    al = [f"x=Vi({dim})", f"y=Vj({dim})"]
    r = make_reduction(formula, al, red, 1, "auto", K if red == "ArgKMin" else None)
    spec = r.spec(dtype, guard=True)
    tpl = schedules.template("llvm")
    rb = row_block_for(spec, t)
    count, bits = vector_registers(t)
    lanes = vector_lanes(t, dtype)
    plain = row_block_for(r.spec(dtype), t)
    assert rb == (lanes if red == "ArgKMin" and bits >= GUARD_ONE_VECTOR_BITS else plain)
    low = lower(spec, rb, tpl.math(t))
    sch = tpl.schedule(s_tir.Schedule(low.func), low.shape, t)
    text = tpl.finish(sch.mod, low.shape, t).script()
    assert dim >= GUARD_MIN_DIM and "guard_acc" in text
    size = int(re.search(r"guard_acc = T\.alloc_local\(\((\d+),\)", text).group(1))
    accumulators = size // lanes  # step x chains registers' worth of row-block vectors
    assert MIN_CHAINS <= accumulators <= count


def test_gradients_through_guarded_kernels():
    """KMin's and Min's gradients (symbolic, from the selected indices) after a guarded
    forward call, against torch autograd of the dense float64 answer."""
    x, y = _data("normal", 200, 500, torch.float64, seed=7)
    x.requires_grad_()
    y.requires_grad_()
    al = [f"x=Vi({D})", f"y=Vj({D})"]
    for red, kw, pick in (
        ("KMin", {"opt_arg": K}, lambda d: d.topk(K, dim=1, largest=False).values),
        ("Min", {}, lambda d: d.min(1, keepdim=True).values),
    ):
        dense = pick(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
        out = Genred("SqDist(x,y)", al, reduction_op=red, axis=1, **kw)(x, y)
        w = torch.randn_like(out)
        got = torch.autograd.grad((out * w).sum(), (x, y))
        want = torch.autograd.grad((dense * w).sum(), (x, y))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("red,k", [("ArgMin", None), ("ArgKMin", K)])
def test_the_guard_is_taken_where_it_pays(red, k, monkeypatch):
    """With the policy's own bound, a call takes the guarded kernel exactly where the rule
    says, computed from the guarded kernel's own row block (few reduced rows: the plain
    kernel, which the guard would not beat), and both give the float64 answer.  Where a
    one-vector block would pay but the guarded kernel's block would not, the guarded kernel
    is not even asked for (it would be compiled for nothing)."""
    monkeypatch.setattr(schedules.cpu, "GUARD_MAX_SHARE", SHARE)
    al = [f"x=Vi({D})", f"y=Vj({D})"]
    r = make_reduction("SqDist(x,y)", al, red, 1, "auto", k)
    rows = build.get_kernel(r.spec("float32", guard=True), CPU).row_block  # compiled
    pays = schedules.cpu.cpu_guard_pays
    mid = next(n for n in range(2, 10**6) if pays(1, k or 1, n) and not pays(rows, k or 1, n))
    for n in (100, mid, 20000):
        x, y = _data("normal", 64, n, torch.float32, seed=n)
        g = Genred("SqDist(x,y)", al, reduction_op=red, axis=1, **({"opt_arg": k} if k else {}))
        idx = g(x, y)
        memo = g.reduction.memo
        hit = memo.get(("kernel", "float32", CPU, False, (), "guard", True))
        hit = hit or memo.get(("kernel", "float32", CPU, False, (), "guard", "int16"))
        # not even compiled where one-row blocks would not pay; else the guarded kernel's rows
        guarded = (
            hit is not None and schedules.cpu.guard_share(hit[1].row_block, k or 1, n) <= SHARE
        )
        assert (not guarded) == (("kernel", "float32", CPU, False, ()) in g.reduction.memo)
        assert hit is None or n != mid
        assert guarded == (n == 20000)  # the sizes chosen for it on any CPU's row blocks
        d = torch.cdist(x.double(), y.double())
        want = d.topk(k or 1, dim=1, largest=False).values
        got = d.gather(1, idx.view(64, -1)).sort(dim=1).values
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
