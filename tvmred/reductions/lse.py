"""The LogSumExp family: LogSumExp(Weight), SumSoftMaxWeight (alias SoftMax) and the raw
Max_SumShiftExp(Weight) states -- a running max and a sum of shifted exponentials, per
weight column -- and their derivatives."""

from __future__ import annotations

import dataclasses
import math

from .. import mathfns
from ..diff import grad as sym_grad
from ..ops import add, f, intcst, make, mul, sub
from .core import (
    REDUCTIONS,
    Chain,
    Plan,
    Reduction,
    Space,
    Step,
    Variant,
    inf,
    masked,
    reduction,
    tangent_diff,
    tirx,
    xp_of,
)
from .flash import weighted_blocks
from .sum import ANY


def _lse(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """State (m, s_1..s_G) = running max of F and sum_j exp(F - m) * G_j, per weight column;
    the root formula is Concat(F, G).  One tuple reduction: the running max is kept once for
    all G columns -- one exp a pair (a reduction per column kept G copies of the max, each with
    its own exp: a SumSoftMaxWeight with 64-dimensional values evaluated 64 exps a pair)."""
    t = tirx()
    G = dim - 1

    def combine(a, b, unit=False):
        a_big = a[0] >= b[0]  # False when b is NaN: then m and s both become NaN
        same = a[0] == b[0]
        m = t.Select(a_big, a[0], b[0])
        if G == 1:
            # unit weights (a plain LogSumExp): a state's sum is 1 at least once its max is
            # finite, so e below the smallest normal number need not be 0 (exp_neg's flush=False:
            # 1.2e-38 at most, times at most the count of terms, against a sum of 1 or more)
            d = mathfns.exp_neg(t.abs(a[0] - b[0]), acc, flush=not unit)
            e = t.Select(same, t.const(1, acc), d)
            # s_big + s_small e: e written once (CUDA's code generator copies an expression
            # into both arms of a select -- two exps a pair)
            return m, t.Select(a_big, a[1], b[1]) + t.Select(a_big, b[1], a[1]) * e
        # G columns: the exp's argument is selected (0 for equal maxima, -inf - -inf
        # included), not its value -- a select around a call is an if/else in CUDA C, one per
        # column, which no compiler merged (64 exps a pair); as straight-line code the G
        # copies are one.  Then the two scale factors and a multiply and an FMA a column.
        d = t.abs(t.Select(same, t.const(0, acc), a[0] - b[0]))  # e = e^-d
        one = t.const(1, acc)

        def column(k: int):
            # e and the exp's argument bound (Let: the exp's expression uses its argument many
            # times -- unbound, a kernel of 31 columns was 4x the size and twice as slow to compile)
            ev, dv = t.Var(f"e{k}", acc), t.Var(f"d{k}", acc)  # one definition each (TIR's rule)
            e = t.Let(dv, d, mathfns.exp_neg(dv, acc))
            return t.Let(ev, e, a[k] * t.Select(a_big, one, ev) + b[k] * t.Select(a_big, ev, one))

        return (m, *[column(k) for k in range(1, G + 1)])

    def identity(*ts):
        return (inf(ts[0], -1.0), *[t.const(0, x) for x in ts[1:]])

    if space.two_pass:
        red = lambda unit: te.comm_reducer(lambda a, b: combine(a, b, unit), identity, name="lse")  # noqa: E731
        return _two_pass(te, root, rows, space, red, dtype, acc, G)

    def body(i, u, ax, j, w):
        comps = root(i, j)
        if acc != dtype:
            comps = [x.astype(acc) for x in comps]
        unit = G == 1 and isinstance(comps[1], t.FloatImm) and comps[1].value == 1
        red = te.comm_reducer(lambda a, b: combine(a, b, unit), identity, name="lse")
        # a masked j: its weights 0, its F a duplicate of F at j = N - 1 (which the running
        # max already holds or will hold: the max is unchanged) where the space allows it
        f = comps[0] if space.duplicates else masked(w, comps[0], inf(acc, -1.0))
        return red((f, *[masked(w, c, t.const(0, acc)) for c in comps[1:]]), axis=ax)

    return list(space.compute(te, rows, 1, body))


def _two_pass(te, root, rows, space: Space, reducer, dtype, acc, G: int) -> list:
    """A LogSumExp over blocks of B = ``space.two_pass`` consecutive j: F of the block's j
    (``lse_f``, -inf past N), the block's max ``bm`` (``lse_bm``), its sum of e^(F - bm)
    (``lse_bs``), then the online combine of (bm, bs) into the running state -- one rescale a
    block instead of one a pair, and the sum's exponentials need no running max (2-vCPU
    Xeon, 1e4 x 1e4 softmin, float32: 1.3-1.45x with AVX2 kernels, 1.15-1.2x with AVX-512).
    With weights (``RedDef.two_pass``: they read no per-pair stage), the block's G weighted
    sums instead (``flash.weighted_blocks``).  Exact as the online loop for infinities and
    NaN: an F equal to its block's max (+-inf included) adds e^0 = 1, a NaN makes the sum
    NaN, and a block of -inf only has the max -inf (the max's identity), so it leaves a
    running state unchanged.  Split-j: the same in each chunk (every tensor's first index),
    its blocks past the chunk's j all -inf.  ``reducer(unit)``: the running state's."""
    t = tirx()
    n, B = space.n, space.two_pass
    lead, first, count, blocks = space.blocks()
    weights = []  # G's components as F's pass reads them (unit weights: the constant 1)

    def comps(*ij):  # reads past N clamped (the inputs end there), or padded (tiles)
        *s, i, j = ij
        jg = first(*s) + j
        c = root(i, jg if space.padded else t.min(jg, n - 1))
        weights.append(c[1:])
        return [v.astype(acc) for v in c] if acc != dtype else c

    def f(*ij):
        return t.Select(t.likely(ij[-1] < count(*ij[:-2])), comps(*ij)[0], inf(acc, -1.0))

    fb = te.compute((*lead, rows, blocks * B), f, name="lse_f")
    big = te.comm_reducer(lambda a, b: t.max(a, b), lambda dt: inf(dt, -1.0), name="lse_max")
    k = te.reduce_axis((0, B), name="jm")
    bm = te.compute((*lead, rows, blocks),
                    lambda *ib: big(fb[(*ib[:-1], ib[-1] * B + k)], axis=k), name="lse_bm")  # fmt: skip
    w = weights[0][0]
    unit = G == 1 and isinstance(w, t.FloatImm) and w.value == 1
    red = reducer(unit)

    def exp_term(x, m, unit):
        d = t.Var("d", acc)  # bound: exp_neg reads its argument many times
        # unit weights: the block's sum is 1 at least (exp_neg's flush and term)
        e = mathfns.exp_neg(d, acc, flush=not unit, term=unit)
        return t.Let(d, t.Select(x == m, t.const(0, acc), m - x), e)

    jb = te.reduce_axis((0, blocks), name="j")
    if not unit:  # the weights past N are 0: a block of padding adds nothing
        cols = weighted_blocks(te, comps, fb, bm, lead, rows, blocks, B, count, acc, exp_term)

        def weighted(*iu):
            at = (*iu[:-2], iu[-2], jb)
            return red((bm[at], *[c(at) for c in cols]), axis=jb)

        return list(te.compute((*lead, rows, 1), weighted, name="red"))
    k2 = te.reduce_axis((0, B), name="js")

    def term(*ib):
        x, m = fb[(*ib[:-1], ib[-1] * B + k2)], bm[ib]
        return te.sum(exp_term(x, m, True), axis=k2)

    bs = te.compute((*lead, rows, blocks), term, name="lse_bs")

    def state(*iu):
        # a block of -inf: each F is its max, so each added 1 -- the j past N too (padding),
        # which the online loop never saw: taken off (its raw state, as Max_SumShiftExp
        # returns it, then counts the same terms)
        *s, i, _u = iu
        valid = t.max(count(*s), 0)
        pad = t.min(t.max((jb.var + 1) * B - valid, 0), B).astype(acc)
        at = (*s, i, jb)
        sb = t.Select(bm[at] == inf(acc, -1.0), bs[at] - pad, bs[at])
        return red((bm[at], sb), axis=jb)

    return list(te.compute((*lead, rows, 1), state, name="red"))


def _lse_state(d: int, v: Variant, dt: str, acc: str) -> list:
    """The running max, then one sum per weight column: d buffers of one column."""
    return [(1, acc)] * d


def _ms(states: list) -> tuple:
    """(m, s): the running max (..., rows, 1) and the sums side by side (..., rows, G)."""
    return states[0], xp_of(states).cat(states[1:], -1) if len(states) > 2 else states[1]


def _lse_combine(states: list, v: Variant) -> list:
    x = xp_of(states)
    m, s = _ms(states)
    top = x.amax(m, 0)  # NaN propagates
    # e^(m - top), 1 where m is the top (+-inf included: inf - inf would be NaN), 0 for -inf
    scale = x.where(m == top, 1.0, x.where(m == -math.inf, 0.0, x.fn("exp", m - top)))
    total = (s * scale).sum(0)
    return [top, *[total[:, k : k + 1] for k in range(total.shape[1])]]


def _lse_join(parts: list) -> list:
    """The states of column chunks side by side: one max (every chunk reduced the same F in
    the same order), all the sums."""
    return [parts[0][0], *[s for p in parts for s in p[1:]]]


#: Weight columns one kernel of the LogSumExp family takes (more: several kernels over
#: slices of them, each computing F again).  F -- an attention's dot product -- is the cost a
#: slice repeats: SumSoftMaxWeight of (q|k), D = 64, 4000 x 4000, in one process (2-vCPU Zen 4;
#: AVX2 kernels / AVX-512), against slices of 31 columns as before: E = 64 (65 columns with
#: the denominator's) in one kernel 2.33x / 1.65x, compiled in 3.5 / 2.5 s against 6.7 / 3.2
#: s for the three slices; E = 32 1.78x, E = 128 in two kernels 1.34x (AVX2).  65 keeps a
#: GPU thread's state in its registers (sm_90, 64 columns: 168 registers, no spill --
#: sass_count); on the CPU one kernel of 129 was faster still at E = 128 (2.4x), but E = 256
#: in one took 30 s to compile against 15 s for nine slices.
LSE_COLUMNS = 65

#: The same where the kernel runs j in blocks (the CPU's two-pass form): its state is updated
#: once a block, not kept live at every pair.  SumSoftMaxWeight D = 64, E = 128, 4000 x 4000,
#: one thread (2-vCPU Zen 4, AVX-512): one kernel 90 ms against 195 ms for two of 64 values
#: (online loops, each computing F), compiled in 11.3 s against 6.2 s.
LSE_COLUMNS_BLOCKED = 129


def _lse_chunking(f, v: Variant, dt: str, acc: str, blocked: bool) -> tuple:
    """(weight columns, the most one kernel takes) for column chunks: the max is shared;
    more where the target runs this formula's kernel in blocks of j (``blocked``)."""
    wide = blocked and _two_pass_of(f, dt)
    return f.dim - 1, LSE_COLUMNS_BLOCKED if wide else LSE_COLUMNS


def _lse_uses(d: int) -> list:
    return [d - 1] + [1] * (d - 1)  # F is read by every weight column's update: staged


def _lse_final(s, v, dtype):
    m, sm = _ms(s)
    return xp_of(s).astype(m + xp_of(s).fn("log", sm), dtype)


def _softmax_final(s, v, dtype):
    """NaN where the max of F is infinite (+inf somewhere, or -inf everywhere), as
    torch.softmax: the weights are undefined there."""
    m, sm = _ms(s)
    ratio = sm[:, 1:] / sm[:, :1]
    x = xp_of(s)
    return x.astype(x.where(x.fn("isinf", m[:, :1]), math.nan, ratio), dtype)


def _raw_lse_final(s, v, dtype):
    m, sm = _ms(s)
    return xp_of(s).astype(xp_of(s).cat([m[:, :1], sm], 1), dtype)


def _lse_vjp(r: Reduction, k: int) -> Plan:
    """d log sum_j e^F G = sum_j e^(F - L) (G dF + dG) g, with L the output."""
    dg = r.formula.dim - 1
    gv, lv = r.extra(dg), r.extra(dg, 1)
    w = mul(gv, f("Exp", sub(r.main, lv)))
    v = r.args[k]
    if r.weight is None:
        fg = sym_grad(r.main, v, w)
    else:
        fg = add(sym_grad(r.main, v, f("Sum", mul(w, r.weight))), sym_grad(r.weight, v, w))
    if fg.is_zero:
        return None
    spec = r.sum_of(fg, [(gv, "gradient"), (lv, "output")], k)
    return Chain((Step(spec, ("grad", "out")),))


def _softmax_vjp(r: Reduction, k: int) -> Plan:
    """out = sum_j p_j w_j, p = softmax_j(F): d out = sum_j p_j (dw_j + (w_j - out) dF_j);
    p needs the log-sum-exp L of F, a first reduction."""
    w = r.weight  # the user's weight (the formula is Concat(F, Concat(1, w)))
    gv, sv, lv = r.extra(w.dim), r.extra(w.dim, 1), r.extra(1, 2)
    p = f("Exp", sub(r.main, lv))
    v = r.args[k]
    dF = mul(p, sub(f("Scalprod", gv, w), f("Scalprod", gv, sv)))
    fg = add(sym_grad(w, v, mul(p, gv)), sym_grad(r.main, v, dF))
    if fg.is_zero:
        return None
    lse = dataclasses.replace(
        r, formula=make("Concat", r.main, intcst(1)), red="LogSumExp", weight=None, memo={}
    )
    spec = r.sum_of(fg, [(gv, "gradient"), (sv, "output"), (lv, "logsumexp")], k)
    return Chain((Step(lse), Step(spec, ("grad", "out", 0))))


def _lse_jvp(r: Reduction, ks: tuple) -> Plan:
    """L = log sum_j e^F G: dL = sum_j e^(F - L) (G dF + dG) (G = 1 without a weight)."""
    dF = tangent_diff(r, r.main, ks)
    lv = r.extra(r.formula.dim - 1, len(ks))
    inner = dF if r.weight is None else add(mul(r.weight, dF), tangent_diff(r, r.weight, ks))
    fg = mul(f("Exp", sub(r.main, lv)), inner)
    return Chain(
        (Step(r.sum_with(fg, [*r.tangent_extra(ks), (lv, "output")]), ("tangents", "out")),)
    )


def _softmax_jvp(r: Reduction, ks: tuple) -> Plan:
    """out = sum_j p_j w_j, p = softmax_j(F): d out = sum_j p_j (dw_j + (w_j - out) dF_j)."""
    w = r.weight
    ov, lv = r.extra(w.dim, len(ks)), r.extra(1, len(ks) + 1)
    inner = add(tangent_diff(r, w, ks), mul(sub(w, ov), tangent_diff(r, r.main, ks)))
    fg = mul(f("Exp", sub(r.main, lv)), inner)
    lse = dataclasses.replace(
        r, formula=make("Concat", r.main, intcst(1)), red="LogSumExp", weight=None, memo={}
    )
    extra = [*r.tangent_extra(ks), (ov, "output"), (lv, "logsumexp")]
    return Chain((Step(lse), Step(r.sum_with(fg, extra), ("tangents", "out", 0))))


def _plain(w) -> bool:
    """Weights a two-pass kernel takes: constants and variables, concatenated (they read no
    per-pair stage, which F's pass computes)."""
    if w.op == "Extract":  # a column chunk's weights: a slice of G in Concat(F, G)
        f, (start, _) = w.args[0], w.params
        return f.op == "Concat" and start >= f.args[0].dim and _plain(f.args[1])
    return w.is_var or w.op == "IntCst" or (w.op == "Concat" and all(map(_plain, w.args)))


def _two_pass_of(f, dtype: str) -> bool:
    """Unit weights, or plain ones (:func:`_plain`) of inputs the block sums read as runs of
    columns (``flash.runs``: not bfloat16, whose values are bit operations on its int16s)."""
    if f.op != "Concat":
        return False
    return f.args[1] is intcst(1) or (_plain(f.args[1]) and dtype != "bfloat16")


_lse_tree = lambda main, w: make("Concat", main, w if w is not None else intcst(1))  # noqa: E731
_softmax_tree = lambda main, w: make("Concat", main, make("Concat", intcst(1), w))  # noqa: E731

_lcommon = dict(
    columns=lambda f, start, n: make(
        "Concat", make("Elem", f, params=(0,)), make("Extract", f, params=(1 + start, n))
    ),
    kind="lse",
    kernel="lse",
    state=_lse_state,
    compute=_lse,
    combine=_lse_combine,
    join=_lse_join,
    chunking=_lse_chunking,
    scalar=True,
    root_uses=_lse_uses,
    tree=_lse_tree,
    two_pass=_two_pass_of,
)
reduction(
    "LogSumExp",
    finalize=_lse_final,
    vjp=_lse_vjp,
    jvp=_lse_jvp,
    grad_doc=ANY,
    weight="optional",
    doc="log sum_j exp(F) (F scalar), or log sum_j exp(F) G with formula2 = G",
    **_lcommon,
)
reduction(
    "LogSumExpWeight",
    finalize=_lse_final,
    vjp=_lse_vjp,
    jvp=_lse_jvp,
    grad_doc=ANY,
    weight="required",
    doc="log sum_j exp(F) G",
    **_lcommon,
)
reduction(
    "SumSoftMaxWeight",
    finalize=_softmax_final,
    vjp=_softmax_vjp,
    jvp=_softmax_jvp,
    grad_doc=ANY,
    weight="required",
    doc="sum_j exp(F) G / sum_j exp(F)",
    **{**_lcommon, "tree": _softmax_tree},
)
reduction(
    "Max_SumShiftExp",
    finalize=_raw_lse_final,
    vjp=None,
    grad_doc="no",
    weight="optional",
    doc="raw (m, s) state: m = max F, s = sum exp(F - m)",
    **_lcommon,
)
reduction(
    "Max_SumShiftExpWeight",
    finalize=_raw_lse_final,
    vjp=None,
    grad_doc="no",
    weight="required",
    doc="raw (m, s) state with weight G",
    **_lcommon,
)
REDUCTIONS["SoftMax"] = REDUCTIONS["SumSoftMaxWeight"]  # an alias, as in pykeops
