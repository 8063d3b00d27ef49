"""Batch dimensions (broadcasting, gradients summed over broadcast dims) and block-sparse
ranges (vs the dense masked reference), with the cluster helpers."""

import numpy as np
import pytest
import torch

from tvmred.numpy import Genred as NpGenred
from tvmred.torch import Genred
from tvmred.torch.cluster import (
    cluster_centroids,
    cluster_ranges,
    cluster_ranges_centroids,
    from_matrix,
    grid_cluster,
    sort_clusters,
)

GAUSS = "Exp(-SqDist(x,y)*s)*b"
AL = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)", "s = Pm(1)"]


def dense_batch(x, y, b, s):
    d2 = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    return torch.exp(-d2 * s[..., None]) @ b


def test_batch_broadcasting_and_gradients():
    x = torch.rand(2, 3, 20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 3, 30, 3, dtype=torch.float64, requires_grad=True)  # broadcast over dim 0
    b = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)  # no batch dims
    s = torch.rand(2, 1, 1, dtype=torch.float64, requires_grad=True)  # (B1, B2=1, 1) parameter
    c = Genred(GAUSS, AL, axis=1)(x, y, b, s)
    ref_in = [t.detach().clone().requires_grad_() for t in (x, y, b, s)]
    ref = dense_batch(*ref_in)
    assert c.shape == ref.shape == (2, 3, 20, 2)
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    for g, w in zip(torch.autograd.grad(c, (x, y, b, s), e), torch.autograd.grad(ref, ref_in, e)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w)


def test_batch_axis0_and_tuple_outputs():
    x = torch.rand(3, 20, 2, dtype=torch.float64)
    y = torch.rand(3, 25, 2, dtype=torch.float64)
    c = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min_ArgMin", axis=0)(x, y)
    d2 = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)  # (B, M, N)
    v, i = d2.min(1)
    torch.testing.assert_close(c[0][..., 0], v)
    assert torch.equal(c[1][..., 0], i)


def test_batch_mismatch_is_reported():
    g = Genred("x+y", ["x = Vi(1)", "y = Vj(1)"], axis=1)
    with pytest.raises(ValueError, match="batch dimensions do not broadcast"):
        g(torch.rand(2, 5, 1), torch.rand(3, 5, 1))


def clustered_problem(M=400, N=500, dtype=torch.float64):
    x, y = torch.rand(M, 2, dtype=dtype), torch.rand(N, 2, dtype=dtype)
    (x,), lx = sort_clusters((x,), grid_cluster(x, 0.25))
    (y, b), ly = sort_clusters((y, torch.rand(N, 1, dtype=dtype)), grid_cluster(y, 0.25))
    rx, cx, _ = cluster_ranges_centroids(x, lx)
    ry, cy, _ = cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None] - cy[None]) ** 2).sum(-1) < 0.2  # keep nearby cluster pairs only
    mask = keep[lx][:, ly]  # (M, N) point-level mask
    return x, y, b, from_matrix(rx, ry, keep), mask, keep


def test_cluster_helpers():
    x = torch.tensor([[0.1, 0.1], [0.9, 0.9], [0.15, 0.05], [0.6, 0.1]])
    lab = grid_cluster(x, 0.5)
    assert lab[0] == lab[2] and len({lab[0].item(), lab[1].item(), lab[3].item()}) == 3
    xs, ls = sort_clusters(x, lab)
    assert torch.all(ls[1:] >= ls[:-1])
    r = cluster_ranges(ls)
    assert r.tolist() == [[a, b] for a, b in zip([0] + r[:, 1].tolist()[:-1], r[:, 1].tolist())]
    c = cluster_centroids(xs, ls)
    for k in range(len(r)):
        torch.testing.assert_close(c[k], xs[r[k, 0] : r[k, 1]].mean(0))


@pytest.mark.parametrize("axis", [1, 0])
def test_ranges_match_dense_masked_reference(axis):
    x, y, b, ranges, mask, keep = clustered_problem()
    assert 0.05 < keep.float().mean() < 0.9  # genuinely block-sparse
    x.requires_grad_()
    y.requires_grad_()
    g = Genred("Exp(-SqDist(x,y)*IntCst(4))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=axis)
    c = g(x, y, b, ranges=ranges)
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    K = torch.exp(-4 * ((xr[:, None] - yr[None]) ** 2).sum(-1)) * mask
    ref = K @ b if axis == 1 else (K * b.T).sum(0)[:, None]
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    for gg, w in zip(torch.autograd.grad(c, (x, y), e), torch.autograd.grad(ref, (xr, yr), e)):
        torch.testing.assert_close(gg, w)


def test_ranges_argmin_indices_are_global():
    x, y, b, ranges, mask, keep = clustered_problem()
    v, i = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min_ArgMin", axis=1)(
        x, y, ranges=ranges
    )
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1).masked_fill(~mask, float("inf"))
    rv, ri = d2.min(1)
    has = mask.any(1)
    torch.testing.assert_close(v[has, 0], rv[has])
    assert torch.equal(i[has, 0], ri[has])
    assert torch.all(i[~has] == -1)


def test_numpy_ranges_and_batch():
    x, y, b, ranges, mask, keep = clustered_problem()
    g = NpGenred("Exp(-SqDist(x,y))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    c = g(
        x.cpu().numpy(),
        y.cpu().numpy(),
        b.cpu().numpy(),
        ranges=tuple(t.cpu().numpy() for t in ranges),
    )
    K = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask
    np.testing.assert_allclose(c, (K @ b).cpu().numpy(), rtol=1e-12, atol=1e-14)
    xb = np.random.rand(2, 10, 2)
    yb = np.random.rand(2, 12, 2)
    bb = np.random.rand(2, 12, 1)
    cb = g(xb, yb, bb)
    Kb = np.exp(-((xb[:, :, None] - yb[:, None]) ** 2).sum(-1))
    np.testing.assert_allclose(cb, Kb @ bb, rtol=1e-12)


# ------------------------------------------------------------- ranges in one kernel launch

RANGED = [
    ("Sum", {}, "Exp(-SqDist(x,y)*IntCst(4))*b"),
    ("Min_ArgMin", {}, "SqDist(x,y)"),
    ("KMin_ArgKMin", {"opt_arg": 3}, "SqDist(x,y)"),
    ("LogSumExp", {}, "-SqDist(x,y)*IntCst(4)"),
    ("SumSoftMaxWeight", {"formula2": "b"}, "-SqDist(x,y)*IntCst(4)"),
]


def masked_reference(red, kw, x, y, b, mask, axis):
    """The dense float64 answer of ``red`` over the kept pairs (rows with some kept pair)."""
    if axis == 0:
        x, y, mask = y, x, mask.T  # reduce over i: the roles swap (b is on the reduced side)
    d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
    if red == "Sum":
        return (torch.exp(-4 * d2) * mask) @ b
    if red == "Min_ArgMin":
        v, i = d2.masked_fill(~mask, float("inf")).min(1, keepdim=True)
        return v, i
    if red == "KMin_ArgKMin":
        v, i = d2.masked_fill(~mask, float("inf")).topk(3, 1, largest=False)
        return v, i
    F = (-4 * d2).masked_fill(~mask, float("-inf"))
    if red == "LogSumExp":
        return F.logsumexp(1, keepdim=True)
    return torch.softmax(F, 1) @ b


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("red,kw,formula", RANGED)
def test_ranges_in_one_launch_every_reduction(red, kw, formula, axis):
    """Values (indices: global, lowest first on ties) and gradients of every reduction kind
    with block-sparse ranges against the dense masked float64 answer, computed by the ranged
    kernel (one launch for all clusters)."""
    x, y, b, ranges, mask, keep = clustered_problem(M=300, N=350)
    al = ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)" if axis == 1 else "b = Vi(1)"]
    if axis == 0:
        b = torch.rand(len(x), 1, dtype=x.dtype)
    g = Genred(formula, al, reduction_op=red, axis=axis, **kw)
    x.requires_grad_()
    y.requires_grad_()
    out = g(x, y, b, ranges=ranges)
    assert ("kernel", "float64", x.device, "ranged", ()) in g.reduction.memo  # the ranged kernel
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = masked_reference(red, kw, xr, yr, b, mask, axis)
    has = (mask.any(1) if axis == 1 else mask.any(0)).nonzero().flatten()
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for o, w in zip(outs, refs):
        if w.dtype == torch.int64:
            assert torch.equal(o[has], w[has])
        else:
            torch.testing.assert_close(o[has], w[has])
    e = torch.randn_like(outs[0])
    e[[k for k in range(len(e)) if k not in set(has.tolist())]] = 0
    for gg, w in zip(
        torch.autograd.grad(outs[0], (x, y), e), torch.autograd.grad(refs[0], (xr, yr), e)
    ):
        torch.testing.assert_close(gg, w)


def odd_ranges():
    """Output clusters [0,5), [5,12) (no reduced range), [12,12) (empty), [12,30) and
    [30,40) with the same ranges (merged into one group), [40,47) whose ranges are given
    unsorted and contiguous ([20,30), [0,10), [10,20): one range [0,30))."""
    ri = torch.tensor([[0, 5], [5, 12], [12, 12], [12, 30], [30, 40], [40, 47]])
    redj = torch.tensor([[3, 9], [30, 31], [10, 25], [10, 25], [20, 30], [0, 10], [10, 20]])
    si = torch.tensor([2, 2, 2, 3, 4, 7])
    # the transposed triple: j-clusters of 10 rows, each with the i-ranges that keep it
    m = torch.zeros(47, 40, dtype=torch.bool)
    for c, (o0, o1) in enumerate(ri.tolist()):
        for a, b2 in redj[(si[c - 1] if c else 0) : si[c]].tolist():
            m[o0:o1, a:b2] = True
    rj = torch.tensor([[0, 10], [10, 20], [20, 30], [30, 40]])
    redi, sj = [], []
    for a, b2 in rj.tolist():
        rows = m[:, a:b2].any(1).nonzero().flatten().tolist()
        redi += [[r, r + 1] for r in rows]
        sj.append(len(redi))
    return (ri, si, redj, rj, torch.tensor(sj), torch.tensor(redi)), m


@pytest.mark.parametrize("threads", ["1", "2"])
def test_ranged_plan_edge_cases(monkeypatch, threads):
    """Clusters without ranges, empty clusters, rows in no cluster, unsorted contiguous
    ranges (merged), clusters sharing their ranges (grouped), few tasks (long ranges cut into
    pieces): the one-launch answer equals the dense masked one and the cluster-by-cluster
    one, for sums (values, gradients) and K-min indices."""
    import tvmred.dispatch
    import tvmred.ranged

    monkeypatch.setenv("TVM_NUM_THREADS", threads)
    monkeypatch.setattr(tvmred.ranged, "MIN_PIECE", 4)  # cut even these short ranges
    ranges, mask = odd_ranges()
    x = torch.rand(50, 2, dtype=torch.float64, requires_grad=True)  # rows 47..49: no cluster
    y, b = torch.rand(40, 2, dtype=torch.float64), torch.rand(40, 1, dtype=torch.float64)
    mask = torch.cat([mask, torch.zeros(3, 40, dtype=torch.bool)])
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    knn = Genred(
        "SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="ArgKMin", opt_arg=4, axis=1
    )
    c, idx = g(x, y, b, ranges=ranges), knn(x, y, ranges=ranges)
    xr = x.detach().clone().requires_grad_()
    d2 = ((xr[:, None] - y[None]) ** 2).sum(-1)
    ref = (torch.exp(-d2) * mask) @ b
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(c, x, e)[0], torch.autograd.grad(ref, xr, e)[0])
    full = mask.sum(1) >= 4  # rows with 4 kept pairs at least
    want = d2.detach().masked_fill(~mask, float("inf")).topk(4, 1, largest=False).indices
    assert torch.equal(idx[full], want[full])
    monkeypatch.setattr(tvmred.dispatch, "ranged_device", lambda args, r: False)
    torch.testing.assert_close(g(x, y, b, ranges=ranges), c)  # cluster by cluster
    assert torch.equal(knn(x, y, ranges=ranges), idx)


# ------------------------------------------------------------- batch dims in one launch


def _no_loop(monkeypatch):
    """Fail if a batched call runs its problems one by one."""
    from tvmred import dispatch

    def loop(*a, **k):
        raise AssertionError("the batched call ran problem by problem")

    monkeypatch.setattr(dispatch, "_batched", loop)


def _dense(red, d2, b, k=3):
    """float64 reference of the reductions below over the last axis of d2 (B..., M, N)."""
    if red == "Sum":
        return torch.exp(-d2) @ b
    if red == "LogSumExp":
        return torch.logsumexp(-d2, -1, keepdim=True)
    if red == "Min_ArgMin":
        v, i = d2.min(-1, keepdim=True)
        return v, i
    if red == "ArgKMin":
        return d2.topk(k, -1, largest=False).indices
    if red == "SumSoftMaxWeight":
        return torch.softmax(-d2, -1) @ b
    raise ValueError(red)


CASES = {
    "Sum": ("Exp(-SqDist(x,y))*b", {}),
    "LogSumExp": ("-SqDist(x,y)", {}),
    "Min_ArgMin": ("SqDist(x,y)", {}),
    "ArgKMin": ("SqDist(x,y)", {"opt_arg": 3}),
    "SumSoftMaxWeight": ("-SqDist(x,y)", {"formula2": "b"}),
}


@pytest.mark.parametrize("red", list(CASES))
@pytest.mark.parametrize("axis", [0, 1])
def test_batched_calls_run_in_one_launch(red, axis, monkeypatch):
    """A batch of small problems is one block-diagonal ranged launch: values (positions local
    to each problem), on both axes, with broadcast batch dims, against dense float64."""
    _no_loop(monkeypatch)
    formula, kw = CASES[red]
    aliases = ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"] if "b" in formula + kw.get(
        "formula2", "") else ["x = Vi(3)", "y = Vj(3)"]  # fmt: skip
    if axis == 0:  # the reduction over i: b is an i-variable then
        aliases = [a.replace("b = Vj", "b = Vi") for a in aliases]
    g = Genred(formula, aliases, reduction_op=red, axis=axis, **kw)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 70, 3, dtype=torch.float64)
    y = torch.rand(1, 3, 90, 3, dtype=torch.float64)  # broadcast over the first batch dim
    b = torch.rand(2, 3, 70 if axis == 0 else 90, 2, dtype=torch.float64)
    args = (x, y, b) if len(aliases) == 3 else (x, y)
    out = g(*args)
    d2 = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)
    if axis == 0:
        d2 = d2.transpose(-1, -2)
    ref = _dense(red, d2, b)
    if red == "Min_ArgMin":
        torch.testing.assert_close(out[0], ref[0])
        assert torch.equal(out[1], ref[1])
    elif red == "ArgKMin":
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref)


def test_one_launch_batches_differentiate(monkeypatch):
    """Gradients through the stacked launch reach every argument in its own (broadcast)
    shape, to the second order, as through the dense reference."""
    _no_loop(monkeypatch)
    g = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    x = torch.rand(4, 20, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 30, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)
    ins = [t.detach().clone().requires_grad_() for t in (x, y, b)]
    c = g(x, y, b)
    ref = torch.exp(-((ins[0][:, :, None] - ins[1][:, None]) ** 2).sum(-1)) @ ins[2]
    torch.testing.assert_close(c, ref)
    e = torch.randn_like(ref)
    got = torch.autograd.grad(c, (x, y, b), e, create_graph=True)
    want = torch.autograd.grad(ref, ins, e, create_graph=True)
    for a, w in zip(got, want):
        assert a.shape == w.shape
        torch.testing.assert_close(a, w)
    torch.testing.assert_close(torch.autograd.grad(got[0].sum(), y)[0],
                               torch.autograd.grad(want[0].sum(), ins[1])[0])  # fmt: skip


def test_batches_that_cannot_be_stacked_run_one_by_one(monkeypatch):
    """A parameter with batch dims (one launch has one parameter vector), or problems above
    ONE_LAUNCH_PAIRS, run problem by problem -- and still give the right answer."""
    from tvmred import dispatch

    def stacked(*a, **k):
        raise AssertionError("stacked")

    monkeypatch.setattr(dispatch, "batched_one_launch", stacked)
    x = torch.rand(3, 20, 3, dtype=torch.float64)
    y = torch.rand(3, 30, 3, dtype=torch.float64)
    b = torch.rand(3, 30, 2, dtype=torch.float64)
    s = torch.rand(3, 1, dtype=torch.float64)
    out = Genred(GAUSS, AL, axis=1)(x, y, b, s)
    torch.testing.assert_close(out, dense_batch(x, y, b, s))
    monkeypatch.setattr(dispatch, "ONE_LAUNCH_PAIRS", 20 * 30)
    s1 = torch.rand(1, dtype=torch.float64)
    out = Genred(GAUSS, AL, axis=1)(x, y, b, s1)
    torch.testing.assert_close(out, dense_batch(x, y, b, s1))


def test_stacking_stays_within_int32_rows():
    """Stacked rows are indexed by int32 ranges: a batch whose rows would pass 2^31 runs
    problem by problem (the shapes decide: broadcast views, nothing allocated)."""
    from tvmred import dispatch

    r = Genred(GAUSS, AL, axis=1).reduction
    one = torch.empty(1)
    x, s = one.expand(3000, 1, 3), one.expand(1)
    for n, ok in ((10**5, True), (10**6, False)):  # 3000 x 1e6 rows > 2^31
        y, b = one.expand(3000, n, 3), one.expand(3000, n, 2)
        assert dispatch.stackable(r, [x, y, b, s], (3000,)) == ok


def test_numpy_batches_in_one_launch(monkeypatch):
    _no_loop(monkeypatch)
    rng = np.random.default_rng(2)
    x, y = rng.random((5, 40, 3)), rng.random((5, 50, 3))
    out = NpGenred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin",
                   axis=1, opt_arg=4)(x, y)  # fmt: skip
    d2 = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(out, np.argsort(d2, -1, kind="stable")[..., :4])


@pytest.mark.parametrize("ranged", [True])
def test_a_block_sums_last_block_runs_only_its_own_j(ranged):
    """The CPU schedule's finish cuts a ranged kernel's loop over a block sum's last block of
    j to the j below the task's count: a task of 100 j computed the per-pair stages of 1024
    before (schedules/tails.py; dense kernels guard their stages and are left as they are)."""
    import tvm
    from tvm import s_tir

    from tvmred import schedules
    from tvmred.lower import lower
    from tvmred.parse import parse, parse_aliases
    from tvmred.reductions import KernelSpec, Variant
    from tvmred.schedules.tails import _guard_bound
    from tvmred.targets import cpu_target

    al = parse_aliases(["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"])
    variant = Variant(scheme="block", split=ranged, ranged=ranged)
    spec = KernelSpec(parse("Exp(-SqDist(x,y))*b", al), "Sum", 0, "float32", "float32", variant)
    target = cpu_target()
    tpl = schedules.template("llvm")
    low = lower(spec, 64, tpl.math(target), 0)
    assert low.shape.block == 1024
    sch = tpl.schedule(s_tir.Schedule(low.func), low.shape, target)
    mod = tpl.finish(schedules.task_counts(sch.mod, low.shape, target), low.shape, target)
    loops = []

    def walk(n):
        if isinstance(n, tvm.tirx.For):
            loops.append(n)
        for name in ("body", "then_case", "else_case"):
            if getattr(n, name, None) is not None:
                walk(getattr(n, name))
        for c in getattr(n, "seq", None) or ():
            walk(c)

    walk(mod["main"].body)
    inner = [f for f in loops if _guard_bound(f.body, f.loop_var) is not None]
    assert inner and all(isinstance(f.extent, tvm.tirx.Min) for f in inner)
    bound = "tasks" if ranged else "N"
    assert all(bound in str(f.extent) for f in inner)


def test_ranges_shorter_than_a_block():
    """Ranged Sums whose ranges are shorter than a block, longer, and empty, against the
    dense masked reference."""
    torch.manual_seed(3)
    x, y = torch.rand(300, 3, dtype=torch.float64), torch.rand(3000, 3, dtype=torch.float64)
    b = torch.rand(3000, 2, dtype=torch.float64)
    ri = torch.tensor([[0, 100], [100, 200], [200, 300]], dtype=torch.int32)
    rj = torch.tensor([[0, 7], [7, 1507], [1600, 1600], [2000, 2999]], dtype=torch.int32)
    sl = torch.tensor([1, 2, 4], dtype=torch.int32)
    rjt = torch.tensor([[0, 7], [7, 1507], [2000, 2999]], dtype=torch.int32)
    rit = torch.tensor([[0, 100], [100, 200], [200, 300]], dtype=torch.int32)
    slt = torch.tensor([1, 2, 3], dtype=torch.int32)
    out = Genred("Exp(-SqDist(x,y))*b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)(
        x, y, b, ranges=(ri, sl, rj, rjt, slt, rit)
    )
    mask = torch.zeros(300, 3000, dtype=torch.float64)
    mask[0:100, 0:7] = 1
    mask[100:200, 7:1507] = 1
    mask[200:300, 2000:2999] = 1
    ref = (torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask) @ b
    torch.testing.assert_close(out, ref)


def test_ranges_without_an_output_indexed_variable():
    """A formula of parameters and reduced-index variables only (a LazyTensor of one i-row is
    a parameter, as pykeops reads (1, 1, D)) with ranges: the ranged kernel reads each task's
    row block from an output-indexed input, so without one it did not compile (shape fuzz
    seed 5051: an InternalError); such a call now runs cluster by cluster.  Against the
    dense masked float64 answer."""
    torch.manual_seed(0)
    y, b = torch.rand(5, 3, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    p = torch.rand(3, dtype=torch.float64)
    ri = torch.tensor([[0, 1]], dtype=torch.int32)
    rj = torch.tensor([[0, 2], [2, 5]], dtype=torch.int32)
    ranges = from_matrix(ri, rj, torch.tensor([[True, False]]))
    g = Genred("Exp(-SqDist(p,y))*b", ["p = Pm(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    want = (torch.exp(-((p - y[:2]) ** 2).sum(-1))[:, None] * b[:2]).sum(0, keepdim=True)
    torch.testing.assert_close(g(p, y, b, ranges=ranges), want)
