"""Shape fuzzing: the size- and data-dependent paths of the schedules -- row blocks and their
tails, split-j, the K-nearest-neighbour guards (float and 16-bit integer dot products), the
box test, early exits, block sums, ranges in one launch, batch dimensions -- on random sizes,
dimensions, data and reductions of the formulas users write (Gaussian sums, K-NN, softmin,
attention-like weights, dot products), each against dense float64 torch.

Where ``test_fuzz.py`` draws random formulas at one small size, this draws a few formulas at
random sizes (1 to 30 000 rows), scales, offsets and ties (points repeated: zero distances,
equal candidates), in float64, float32 and half inputs (float16, bfloat16: computed in
float32, the outputs rounded), through Genred or the same reduction written with LazyTensor,
so that every branch a size or a value picks is met.  Tolerances are error
bounds of the formula in the dtype (a few units of roundoff times the size of what is summed
or compared), not of tvmred: a term dropped or counted twice fails them in float64.

The default profile checks a fixed set of seeds; ``TVMRED_SHAPE_FUZZ=<n>`` runs n seeds from
``TVMRED_SHAPE_FUZZ_START`` (default 1000): ``TVMRED_SHAPE_FUZZ=200 pytest
tests/test_shape_fuzz.py -k long`` (a failure names its seed and the case to replay).
"""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
from test_fuzz import force_split

from tvmred.torch import Genred
from tvmred.torch.cluster import from_matrix

# name: (formula, reductions it is drawn with)
FORMULAS = {
    "gauss": ("Exp(-SqDist(x,y)*g)*b", ["Sum"]),
    "laplace": ("Exp(-Sqrt(SqDist(x,y)*g))*b", ["Sum"]),
    "dot": ("(x|y)*b", ["Sum"]),
    "sqdist": (
        "SqDist(x,y)",
        ["Min", "ArgMin", "Min_ArgMin", "KMin", "ArgKMin", "KMin_ArgKMin", "Max", "ArgMax"],
    ),
    "inner": ("(x|y)", ["Max_ArgMax", "ArgKMin", "Min"]),
    "softmin": ("-SqDist(x,y)*g", ["LogSumExp", "SumSoftMaxWeight"]),
}
KS = [1, 2, 5, 10, 17]
HALF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}  # unit roundoff of the half outputs
DIMS = [1, 2, 3, 4, 5, 8, 16, 24, 31, 64]


def case(seed: int) -> dict:
    rng = random.Random(seed)
    kind = rng.choice(sorted(FORMULAS))
    formula, reds = FORMULAS[kind]
    red = rng.choice(reds)
    knn = kind in ("sqdist", "inner")
    dtype = "float32" if rng.random() < (0.7 if knn else 0.4) else "float64"
    D = rng.choice(DIMS)
    n_out = _size(rng, 3000)
    n_red = _size(rng, 30000)
    # the dense reference's size: at most 1e7 pairs, 1e8 pair-dimensions
    n_red = max(1, min(n_red, int(1e7 // n_out), int(1e8 // (n_out * D))))
    variant = rng.choices(["plain", "ranges", "batch", "split"], [4, 2, 1.5, 2.5])[0]
    c = {
        "seed": seed,
        "kind": kind,
        "formula": formula,
        "red": red,
        "dtype": dtype,
        "D": D,
        "E": rng.choice([1, 2, 3, 7]) if "b" in formula or red == "SumSoftMaxWeight" else 0,
        "K": rng.choice(KS) if "KMin" in red else 0,
        "axis": rng.randint(0, 1),
        "n_out": n_out,
        "n_red": n_red,
        "variant": variant,
        "chunks": rng.randint(2, 5),
        "batch": rng.choice([(2,), (3,), (2, 2)]),
        "broadcast_y": rng.random() < 0.5,
        "scale": 10 ** rng.uniform(-2, 2),
        "offset": 10 ** rng.uniform(-3, 2.5) if rng.random() < 0.6 else 0.0,
        "repeat_x": rng.random() < 0.3,  # some reduced points equal output points
        "repeat_y": rng.random() < 0.2,  # some reduced points repeated: exact ties
        "density": rng.uniform(0.05, 1.0),
        "grad": dtype == "float64" and red in ("Sum", "LogSumExp", "SumSoftMaxWeight"),
    }
    if dtype == "float32" and rng.random() < 0.25:  # half inputs: computed in float32
        c["dtype"] = rng.choice(["float16", "bfloat16"])
    # the same problem written with LazyTensor (pykeops' other API): its own formula text
    c["lazy"] = rng.random() < 0.3
    c["sqdist_op"] = rng.random() < 0.5  # X.sqdist(Y) or ((X - Y) ** 2).sum(-1)
    return c


def _size(rng: random.Random, most: int) -> int:
    """Log-uniform in [1, most], often next to a power of two (a row block's edge)."""
    if rng.random() < 0.35:
        return max(1, min(most, 2 ** rng.randint(0, int(math.log2(most))) + rng.randint(-1, 1)))
    return max(1, int(10 ** rng.uniform(0, math.log10(most))))


def describe(c: dict) -> str:
    shown = "formula red dtype D E K axis n_out n_red variant".split()
    if c["variant"] == "split":
        shown.append("chunks")
    if c["lazy"]:
        shown.append("lazy")
    return f"shape seed {c['seed']}: " + ", ".join(f"{k}={c[k]}" for k in shown if c[k] != 0)


def data(c: dict) -> dict:
    """Output points o, reduced points r, weights b (reduced side), scale g; float64."""
    gen = torch.Generator().manual_seed(c["seed"])
    lead = c["batch"] if c["variant"] == "batch" else ()
    D, n_out, n_red = c["D"], c["n_out"], c["n_red"]
    shift = c["offset"] * torch.randn(D, generator=gen, dtype=torch.float64)
    o = c["scale"] * torch.randn(*lead, n_out, D, generator=gen, dtype=torch.float64) + shift
    rlead = (1,) * len(lead) if lead and c["broadcast_y"] else lead
    r = c["scale"] * torch.randn(*rlead, n_red, D, generator=gen, dtype=torch.float64) + shift
    if c["repeat_x"]:
        k = min(n_out, n_red, 7)
        r[..., :k, :] = o[(0,) * len(lead)][:k] if lead else o[:k]
    if c["repeat_y"] and n_red > 3:
        r[..., n_red // 2 :, :] = r[..., : n_red - n_red // 2, :].clone()
    b = torch.randn(*lead, n_red, max(c["E"], 1), generator=gen, dtype=torch.float64)
    g = torch.tensor([1 / (c["scale"] ** 2 * D)], dtype=torch.float64)
    g = g * 10 ** torch.empty(1, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    dt = getattr(torch, c["dtype"])
    # the reference sees the values the kernel sees: rounded to the call's dtype
    return {k: v.to(dt).double() for k, v in dict(o=o, r=r, b=b, g=g).items()}


def ranges_of(c: dict) -> tuple:
    """Random contiguous clusters of the output and reduced rows, a random keep matrix of
    cluster pairs: the pykeops ranges 6-tuple (as Vi/Vj see them) and the (out, red) mask."""
    rng = random.Random(c["seed"] + 7)

    def clusters(n: int) -> tuple:
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(0, 12)))) if n > 1 else []
        bounds = [0, *cuts, n]
        ranges = torch.tensor([[a, z] for a, z in zip(bounds, bounds[1:])], dtype=torch.int32)
        labels = torch.repeat_interleave(torch.arange(len(ranges)), ranges[:, 1] - ranges[:, 0])
        return ranges, labels

    (ro, lo), (rr, lr) = clusters(c["n_out"]), clusters(c["n_red"])
    keep = torch.rand(len(ro), len(rr), generator=torch.Generator().manual_seed(c["seed"]))
    keep = keep < c["density"]
    mask = keep[lo][:, lr]
    if c["axis"] == 1:  # output rows are Vi: ranges_i over them
        return from_matrix(ro, rr, keep), mask
    return from_matrix(rr, ro, keep.T), mask


def routine(c: dict) -> Genred:
    out, red_side = ("Vi", "Vj") if c["axis"] == 1 else ("Vj", "Vi")
    x, y = (out, red_side) if c["axis"] == 1 else (red_side, out)
    aliases = [f"x = {x}({c['D']})", f"y = {y}({c['D']})", "g = Pm(1)"]
    if c["E"]:
        aliases.append(f"b = {red_side}({c['E']})")
    weighted = c["red"] == "SumSoftMaxWeight"
    return Genred(
        c["formula"],
        aliases,
        reduction_op=c["red"],
        axis=c["axis"],
        opt_arg=c["K"] or None,
        formula2="b" if weighted else None,
    )


def lazy_call(c: dict, args: list, ranges) -> tuple:
    """The reduction written with LazyTensor: x is Vi, y Vj, b on the reduced side."""
    from tvmred.torch import LazyTensor

    x, y, g = args[:3]
    X, Y, G = LazyTensor(x[..., :, None, :]), LazyTensor(y[..., None, :, :]), LazyTensor(g)
    if c["E"]:
        b = args[3]
        B = LazyTensor(b[..., None, :, :] if c["axis"] == 1 else b[..., :, None, :])
    D2 = X.sqdist(Y) if c["sqdist_op"] else ((X - Y) ** 2).sum(-1)
    F = {
        "gauss": lambda: (-D2 * G).exp() * B,
        "laplace": lambda: (-(D2 * G).sqrt()).exp() * B,
        "dot": lambda: (X | Y) * B,
        "sqdist": lambda: D2,
        "inner": lambda: (X * Y).sum(-1),
        "softmin": lambda: -D2 * G,
    }[c["kind"]]()
    dim = x.dim() - 2 + c["axis"]
    kw = {"ranges": ranges} if ranges is not None else {}
    red = c["red"]
    if red == "SumSoftMaxWeight":
        return F.sumsoftmaxweight(B, dim=dim, **kw)
    method = {"Sum": "sum", "LogSumExp": "logsumexp", "Min_ArgMin": "min_argmin",
              "Max_ArgMax": "max_argmax", "KMin": "Kmin", "ArgKMin": "argKmin",
              "KMin_ArgKMin": "Kmin_argKmin"}.get(red, red.lower())  # fmt: skip
    if c["K"]:
        return getattr(F, method)(c["K"], dim=dim, **kw)
    return getattr(F, method)(dim=dim, **kw)


def call_args(c: dict, v: dict) -> list[torch.Tensor]:
    """The tensors in alias order (x, y, g[, b]) in the call's dtype."""
    x, y = (v["o"], v["r"]) if c["axis"] == 1 else (v["r"], v["o"])
    args = [x, y, v["g"]] + ([v["b"][..., : c["E"]]] if c["E"] else [])
    return [a.to(getattr(torch, c["dtype"])) for a in args]


def sqdist(o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    if o.shape[0] * r.shape[0] * o.shape[1] <= 2_000_000:  # twice differentiable (cdist not)
        return ((o[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return torch.cdist(o, r, compute_mode="donot_use_mm_for_euclid_dist") ** 2


def keops_sqrt(a: torch.Tensor) -> torch.Tensor:
    """sqrt with KeOps' derivative at 0: 0 (its Rsqrt(0) is 0; torch's is inf, and a
    zero distance -- a repeated point -- made torch's gradient NaN: shape seed 6269)."""
    pos = a > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, a, torch.ones_like(a))), 0.0)


def grid(c: dict, o: torch.Tensor, r: torch.Tensor, g: torch.Tensor, d2) -> torch.Tensor:
    """F on the dense (out, red) grid (float64); ``d2`` the squared distances there."""
    kind = c["kind"]
    if kind == "gauss":
        return torch.exp(-d2 * g)
    if kind == "laplace":
        return torch.exp(-keops_sqrt(d2 * g))
    if kind == "dot":
        return o @ r.T
    if kind == "sqdist":
        return d2
    if kind == "inner":
        return o @ r.T
    return -d2 * g


def reference(c: dict, o, r, b, g, mask, d2=None) -> tuple:
    """The dense float64 answer(s) and per-entry error bounds (one per output); ``d2``: the
    squared distances, where the caller has them."""
    u = 2.0**-53 if c["dtype"] == "float64" else 2.0**-24  # half inputs: float32 arithmetic
    D, n_red, red = c["D"], o.new_tensor(float(r.shape[0])), c["red"]
    d2 = sqdist(o, r) if d2 is None else d2
    F = grid(c, o, r, g, d2)
    rounding = u * (4 * D + 16)  # a formula's roundoff, relative to its inputs' sizes
    acc = u * (16 + 4 * torch.sqrt(n_red))  # a sum's roundoff, relative to the sum of |terms|
    if c["kind"] in ("dot", "inner"):
        size = o.norm(dim=1)[:, None] * r.norm(dim=1)[None, :]  # |x||y| bounds a dot's error
    elif c["kind"] == "sqdist":
        size = d2
    else:
        arg = (d2 * g).clamp(min=1e-300)
        size = arg if c["kind"] != "laplace" else arg.sqrt()
    if red == "Sum":
        # exp(-a): relative error ~ a's absolute error (a's size times roundoff)
        terms = size if c["kind"] == "dot" else F.abs() * (1 + size)
        bound = (terms * mask) @ b.abs()
        return ((F * mask) @ b,), ((rounding + acc) * bound + 1e-300,)
    if red in ("LogSumExp", "SumSoftMaxWeight"):
        Fm = F.masked_fill(~mask, -math.inf)
        w = torch.softmax(Fm, 1).nan_to_num(0.0)
        err = rounding * (w * size).sum(1, keepdim=True) + acc  # of the log-sum-exp
        if red == "LogSumExp":
            return (torch.logsumexp(Fm, 1, keepdim=True),), (
                err + u * Fm.amax(1, keepdim=True).abs(),
            )
        val = w @ b
        spread = w @ b.abs()
        return (val,), ((err * 4 + acc) * spread + 1e-300,)
    # Min / Max / K-min families: values compared within the formula's rounding of each value
    largest = red.startswith("Max") or red == "ArgMax"
    key = F.masked_fill(~mask, math.inf if not largest else -math.inf)
    k = c["K"] or 1
    v, i = key.sort(dim=1, descending=largest, stable=True)
    v, i = v[:, :k], i[:, :k]
    i = torch.where(v.isinf(), -1, i)
    tol = rounding * size.gather(1, i.clamp(min=0)) * 2
    return (v, i), (tol, tol)


def check_choice(c, got_i, ref_v, F, tol, what) -> None:
    """Arg indices: in range, distinct, and pointing at values within ``tol`` of the sorted
    reference's (ties and near-ties may pick other indices)."""
    gi = got_i.reshape(ref_v.shape).long()
    sel = ref_v.isfinite()
    assert bool(((gi >= 0) == sel).all()), f"{what}: selected or not differs"
    if c["K"] > 1:
        s = gi.sort(1).values
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        assert not bool(dup.any()), f"{what}: an index twice in a row"
    fv = F.gather(1, gi.clamp(min=0))
    bad = sel & ((fv - ref_v).abs() > tol)
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} indices at values {fv[bad][:3].tolist()} "
        f"vs {ref_v[bad][:3].tolist()}"
    )


def check_close(got, want, tol, what) -> None:
    got = got.double().reshape(want.shape)
    same = (got == want) | (got.isnan() & want.isnan())
    bad = ~same & ~((got - want).abs() <= tol)
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {bad.numel()} entries off, worst "
        f"{(got - want).abs()[bad].max().item():.3g} (bound {tol.expand_as(bad)[bad].max().item():.3g})"
    )


def one(c: dict, o, r, b, g, got, mask, rows, what) -> None:
    """Compare one problem's outputs on ``rows`` (the output rows with work to check)."""
    d2 = sqdist(o, r)
    refs, tols = reference(c, o, r, b, g, mask, d2)
    outs = got if isinstance(got, tuple) else (got,)
    red = c["red"]
    if red in ("ArgMin", "ArgMax", "ArgKMin"):  # indices only
        outs = (None, outs[0])
    if red in ("Min", "Max", "KMin"):
        refs, tols = refs[:1], tols[:1]
    F = grid(c, o, r, g, d2).masked_fill(~mask, math.nan)
    for k, (a, w, t) in enumerate(zip(outs, refs, tols)):
        if a is None:
            continue
        a, w, t = a.detach()[rows], w[rows], t[rows]
        if c["dtype"] in HALF and w.dtype != torch.int64:  # the output rounded to the dtype
            fi = torch.finfo(getattr(torch, c["dtype"]))  # (+ half a subnormal's spacing:
            # float16 values below 6e-5 are rounded to multiples of 6e-8, seed 5169)
            t = t + HALF[c["dtype"]] * w.abs() + fi.tiny * fi.eps / 2
            t = torch.where(w.abs() < fi.max, t, math.inf)
        if w.dtype == torch.int64:
            check_choice(c, a, refs[0][rows], F[rows], tols[0][rows] * 2, what + " [indices]")
        else:
            check_close(a, w, t, what + " [values]")


def run_case(c: dict) -> None:
    what = describe(c)
    v = data(c)
    g = routine(c)
    args = call_args(c, v)
    ranges, mask = None, torch.ones(c["n_out"], c["n_red"], dtype=torch.bool)
    if c["variant"] == "ranges":
        ranges, mask = ranges_of(c)
    if c["grad"]:
        args = [a.requires_grad_() for a in args]
    if c["lazy"]:
        got = lazy_call(c, args, ranges)
    else:
        got = g(*args, ranges=ranges) if ranges is not None else g(*args)
    rows = mask.any(1) if c["K"] <= 1 else mask.sum(1) >= c["K"]
    if c["variant"] == "batch":
        lead = c["batch"]
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in lead)).reshape(-1, len(lead)):
            ix = tuple(idx.tolist())
            ri = tuple(0 for _ in ix) if c["broadcast_y"] else ix
            pick = tuple(a[ix] for a in got) if isinstance(got, tuple) else got[ix]
            one(
                c,
                v["o"][ix],
                v["r"][ri],
                v["b"][ix],
                v["g"],
                pick,
                mask,
                rows,
                f"{what} batch {ix}",
            )
    else:
        one(c, v["o"], v["r"], v["b"], v["g"], got, mask, rows, what)
        if ranges is not None and c["red"] == "Sum":  # rows with no kept pair: 0, as pykeops
            assert bool((got.detach()[~mask.any(1)] == 0).all()), f"{what}: rows with no range"
    if c["grad"]:
        check_gradients(c, v, args, got, mask, what)


def check_gradients(c, v, args, got, mask, what) -> None:
    """d/dx and d/dy of the output against torch autograd of the dense float64 masked answer
    (each batch problem's, stacked: a broadcast y's gradient is summed over the batch); on
    small problems the second order too (d/dx, d/dy of <gradients, u>)."""
    o, r = (v[k].clone().requires_grad_() for k in ("o", "r"))
    b = v["b"][..., : max(c["E"], 1)]
    if c["variant"] == "batch":
        lead, wants = c["batch"], []
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in lead)).reshape(-1, len(lead)):
            ix = tuple(idx.tolist())
            ri = tuple(0 for _ in ix) if c["broadcast_y"] else ix
            wants.append(reference(c, o[ix], r[ri], b[ix], v["g"], mask)[0][0])
        want = torch.stack(wants).reshape(*lead, *wants[0].shape)
    else:
        (want,), _ = reference(c, o, r, b, v["g"], mask)
    rows = mask.any(1)
    e = torch.randn_like(want) * rows[:, None]
    xg, wrt = args[:2], ((o, r) if c["axis"] == 1 else (r, o))
    small = c["n_out"] * c["n_red"] * c["D"] * math.prod(want.shape[:-2]) <= 200_000
    got_g = torch.autograd.grad(got, xg, e.reshape(got.shape), create_graph=small)
    want_g = torch.autograd.grad(want, wrt, e, create_graph=small)
    for name, a, w in zip("xy", got_g, want_g):
        # (+ 1e-12: a gradient that is 0 in exact arithmetic -- a softmax over one j --
        # is roundoff in floating point: seed 3003, 7.5e-19)
        scale = w.abs().max().item()
        check_close(
            a.detach(), w.detach(), torch.tensor(1e-8 * scale + 1e-12), f"{what} [d/d{name}]"
        )
    if not small:
        return
    us = [torch.randn_like(w) for w in want_g]
    got2 = torch.autograd.grad(sum((a * u).sum() for a, u in zip(got_g, us)), xg)
    want2 = torch.autograd.grad(sum((w * u).sum() for w, u in zip(want_g, us)), wrt)
    for name, a, w in zip("xy", got2, want2):
        scale = w.abs().max().item()
        check_close(a, w, torch.tensor(1e-7 * scale + 1e-12), f"{what} [second order, d/d{name}]")


def check(seed: int, monkeypatch) -> None:
    c = case(seed)
    with monkeypatch.context() as m:
        if c["variant"] == "split":
            force_split(m, c["chunks"])
        run_case(c)


CI_SEEDS = list(range(12))


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_random_shape(seed, monkeypatch):
    check(seed, monkeypatch)


@pytest.mark.skipif(
    "TVMRED_SHAPE_FUZZ" not in os.environ,
    reason="the long profile: set TVMRED_SHAPE_FUZZ=<number of seeds>",
)
def test_long_profile(monkeypatch):
    import time

    start = int(os.environ.get("TVMRED_SHAPE_FUZZ_START", "1000"))
    failures, times = [], []
    for seed in range(start, start + int(os.environ["TVMRED_SHAPE_FUZZ"])):
        t0 = time.perf_counter()
        try:
            check(seed, monkeypatch)
        except Exception as e:  # collect them all (an assertion names its seed)
            where = "" if isinstance(e, AssertionError) else f"{describe(case(seed))}: "
            failures.append(f"{where}{type(e).__name__}: {e}"[:600])
        times.append((time.perf_counter() - t0, seed))
    times.sort(reverse=True)
    print("slowest seeds (s):", ", ".join(f"{s}: {t:.1f}" for t, s in times[:10]))
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures)
