"""The reduction registry: each reduction is one :class:`RedDef` with all its rules, and a
:class:`Reduction` is one use of it (formula, output index, arguments).

A reduction ``out_i = Red_j F(i, j)`` (or over i) is lowered as one reduction block ``red``
over the kernel's output rows and the ``cols`` columns of its state buffers.  A record gives

* ``state``    -- the kernel's output buffers ``[(cols, dtype), ...]`` from (dim F, variant,
  dtype, accumulator dtype); ``width`` -- how many of those values per row a kernel keeps in
  registers (the schedule sizes its row blocks with it);
* ``compute``  -- the TE reducer (``te.sum`` or a ``te.comm_reducer`` on a tuple state);
* ``finalize`` -- torch code turning the state buffers into pykeops' outputs;
* ``combine``  -- torch code merging partial states of disjoint ranges of the reduced index
  (split-j schemes, distributed reductions): ``states[p]`` for ranges in increasing order;
* ``vjp``      -- the gradient rule: the reductions that compute the gradient of a
  :class:`Reduction` w.r.t. one argument (a :class:`Chain` or a :class:`Gathered`), None
  when the reduction has none;
* ``kind``     -- the tag schedules read (they never see the formula);
* ``tree``     -- how the kernel's formula is built from F and the weight G (``formula2``).

Vector formulas: Sum, Max, Min, Arg*, KMin* reduce each component separately (as pykeops);
the LogSumExp family needs a scalar F and takes an optional weight G.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from . import mathfns
from ._tvm import tirx
from .diff import diff as sym_diff
from .diff import grad as sym_grad
from .ops import add, f, intcst, make, mul, sub
from .tree import Node, postorder, var


@dataclass(frozen=True)
class Variant:
    """Compile-time options of a reduction kernel: ``k``, the K of the K-min reductions;
    ``scheme``, the summation scheme of Sum ("direct", "block" or "kahan"); ``split``, the
    split-j kernel (partial states of chunks of the reduced index, see :class:`Space`)."""

    k: Optional[int] = None
    scheme: Optional[str] = None
    split: bool = False

    def key(self) -> dict:
        return {n: v for n, v in dataclasses.asdict(self).items() if v not in (None, False)}


@dataclass(frozen=True)
class Space:
    """The reduced index of a kernel: all of ``[0, n)``, or -- the split-j scheme, with
    ``chunks = (S, C)`` -- chunk s of S, ``j = s*C + jj`` for ``jj`` in ``[0, C)`` and
    ``j < n``: the kernel then writes one partial state per chunk (outputs ``(S, rows,
    cols)``), merged by the reduction's ``combine``."""

    n: Any
    chunks: Optional[tuple] = None

    def compute(self, te: Any, rows: Any, cols: int, body: Callable) -> Any:
        """``te.compute`` of the reduction block ``red``: ``body(i, u, axis, j, where)``
        returns the reducer call over ``axis`` of the element at global index ``j``, which
        counts only where ``where`` holds (None: everywhere) -- the reducers put their
        identity element there (:func:`_masked`: ``te.create_prim_func`` drops the ``where``
        of a tuple reducer)."""
        if self.chunks is None:
            j = te.reduce_axis((0, self.n), name="j")
            return te.compute((rows, cols), lambda i, u: body(i, u, j, j.var, None), name="red")
        S, C = self.chunks
        jj = te.reduce_axis((0, C), name="j")

        def chunk(s, i, u):
            j = s * C + jj.var
            return body(i, u, jj, j, j < self.n)

        return te.compute((S, rows, cols), chunk, name="red")


def _masked(where: Any, x: Any, identity: Any) -> Any:
    """The element ``x``, or the reducer's identity where ``where`` is false."""
    return x if where is None else tirx().Select(tirx().likely(where), x, identity)


def _select(u: Any, exprs: list) -> Any:
    """exprs[u] for the column loop variable u (folded away once the schedule unrolls u)."""
    e = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        e = tirx().Select(u == k, exprs[k], e)
    return e


def _inf(dt: str, sign: float = 1.0) -> Any:
    return tirx().const(sign * math.inf, dt)


def _torch() -> Any:
    import torch

    return torch


# ----------------------------------------------------------------------------------- Sum


BLOCK = 1024  # terms per partial sum of sum_scheme="block_sum" (about sqrt(1e6))


def _sum(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """Schemes: "direct" (one accumulator), "block" (partial sums of BLOCK terms added to a
    running total) or "kahan" (compensated); the last two keep two state buffers that
    ``finalize`` adds.  Both update rules assume a sequential reduction."""
    t = tirx()

    def comps(i, j):
        cs = root(i, j)
        return [x.astype(acc) for x in cs] if acc != dtype else cs

    if v.scheme == "direct":
        zero = t.const(0, acc)
        body = lambda i, u, ax, j, w: te.sum(_masked(w, _select(u, comps(i, j)), zero), axis=ax)  # noqa: E731
        return [space.compute(te, rows, dim, body)]
    if v.scheme == "kahan":
        bits = "int32" if acc == "float32" else "int64"

        def opaque(e):  # a bit-cast round trip hides t = s + y from TVM's simplifier
            return t.reinterpret(acc, t.reinterpret(bits, e))

        def combine(a, b):
            y = b[0] - a[1]
            s = opaque(a[0] + y)
            return s, (s - a[0]) - y

        zeros = lambda t0, t1: (t.const(0, t0), t.const(0, t1))  # noqa: E731
        red = te.comm_reducer(combine, zeros, name="kahan")
        zero = t.const(0, acc)
        body = lambda i, u, ax, j, w: red(
            (_masked(w, _select(u, comps(i, j)), zero), zero), axis=ax
        )  # noqa: E731
        return list(space.compute(te, rows, dim, body))

    def combine_block(a, b):  # state (total, partial, j); the element is (0, x_j, j)
        full = t.floormod(b[2], BLOCK) == BLOCK - 1
        p = a[1] + b[1]
        return t.Select(full, a[0] + p, a[0]), t.Select(full, t.const(0, acc), p), b[2]

    red = te.comm_reducer(
        combine_block, lambda *ts: tuple(t.const(0, x) for x in ts), name="blocksum"
    )

    def body(i, u, ax, j, w):
        zero = t.const(0, acc)
        return red((zero, _masked(w, _select(u, comps(i, j)), zero), j), axis=ax)

    return list(space.compute(te, rows, dim, body))


def _sum_state(d: int, v: Variant, dt: str, acc: str) -> list:
    if v.scheme == "direct":
        return [(d, acc)]
    return [(d, acc), (d, acc)] + ([(d, "int32")] if v.scheme == "block" else [])


def _sum_value(s: list, v: Variant) -> Any:
    """The sum a Sum state holds, in float64 (block: total + partial; Kahan: s - c)."""
    if v.scheme == "direct":
        return s[0].double()
    return s[0].double() + (-s[1].double() if v.scheme == "kahan" else s[1].double())


def _sum_final(s: list, v: Variant, dt: Any) -> Any:
    return s[0].to(dt) if v.scheme == "direct" else _sum_value(s, v).to(dt)


def _sum_combine(states: list, v: Variant) -> list:
    total = _sum_value(states, v).sum(0).to(states[0].dtype)
    rest = [total.new_zeros(total.shape)] if v.scheme != "direct" else []
    counter = [states[2][0]] if v.scheme == "block" else []
    return [total, *rest, *counter]


# ------------------------------------------------------------------ Min / Max (+ Arg)


def _keep(is_min: bool, dtype: str) -> Callable:
    """The accumulator (value a, index ia) is kept over b when it holds an element (ia >= 0:
    the identity never beats one, so a column of +inf still gets an index, as in torch) and a
    is NaN (NaN propagates) or b is not NaN and a <= b (a >= b for max): ties keep the lowest
    index."""

    def keep(a, ia, b):
        t = tirx()
        cmp = a <= b if is_min else a >= b
        better = t.Or(mathfns.is_nan(a, dtype), t.And(cmp, mathfns.is_nan(b, dtype, False)))
        return t.And(ia >= 0, better)

    return keep


def _minmax(is_min: bool) -> Callable:
    def compute(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
        t = tirx()
        keep = _keep(is_min, dtype)

        def combine(a, b):
            k = keep(a[0], a[1], b[0])
            return t.Select(k, a[0], b[0]), t.Select(k, a[1], b[1])

        def identity(tv, ti):
            return _inf(tv, 1.0 if is_min else -1.0), t.const(-1, ti)

        red = te.comm_reducer(combine, identity, name="argred")

        def body(i, u, ax, j, w):
            x = _masked(w, _select(u, root(i, j)), _inf(dtype, 1.0 if is_min else -1.0))
            return red((x, _masked(w, j, t.const(-1, "int32"))), axis=ax)

        return list(space.compute(te, rows, dim, body))

    return compute


def _minmax_combine(is_min: bool) -> Callable:
    def combine(states: list, v: Variant) -> list:
        vals, idx = states
        bv, bi = vals[0], idx[0]
        for p in range(1, vals.shape[0]):  # the kernel's rule, folded over the ranges in order
            a, b = bv, vals[p]
            better = a.isnan() | (((a <= b) if is_min else (a >= b)) & ~b.isnan())
            keep = (bi >= 0) & better
            bv, bi = _torch().where(keep, a, b), _torch().where(keep, bi, idx[p])
        return [bv, bi]

    return combine


def _with_idx(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d, dt), (d, "int32")]


# ---------------------------------------------------------------------------- K-min


#: The largest K of the K-min reductions: the insertion chain keeps K values per row and its
#: compile time grows faster than K (K=64 about 20 s, K=128 about a minute on a 2-core CPU).
MAX_K = 128


def _kmin(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """The K smallest values (ascending) and their indices, by insertion: the state is K
    sorted values then K indices; each new element goes after equal ones (lowest index
    first).  NaN and +inf are never inserted.  The combine inserts b's first element, so it
    assumes a sequential reduction."""
    t = tirx()
    K = v.k

    def combine(a, b):
        x, jx = b[0], b[K]
        vals, idx = list(a[:K]), list(a[K:])
        nv, ni = [], []
        for r in range(K):
            lt = x < vals[r]
            if r == 0:
                nv.append(t.Select(lt, x, vals[0]))
                ni.append(t.Select(lt, jx, idx[0]))
            else:
                lt_prev = x < vals[r - 1]
                nv.append(t.Select(lt, t.Select(lt_prev, vals[r - 1], x), vals[r]))
                ni.append(t.Select(lt, t.Select(lt_prev, idx[r - 1], jx), idx[r]))
        return tuple(nv + ni)

    def identity(*ts):
        return tuple([_inf(x) for x in ts[:K]] + [t.const(-1, x) for x in ts[K:]])

    red = te.comm_reducer(combine, identity, name="kminred")

    def body(i, u, ax, j, w):
        x = _masked(w, _select(u, root(i, j)), _inf(dtype))  # +inf is never inserted
        elem = [x] + [_inf(dtype)] * (K - 1) + [j] + [t.const(-1, "int32")] * (K - 1)
        return red(tuple(elem), axis=ax)

    return list(space.compute(te, rows, dim, body))


def _kmin_state(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d, dt)] * v.k + [(d, "int32")] * v.k


def _kmin_combine(states: list, v: Variant) -> list:
    """The K best of the concatenated lists: a stable sort keeps, among equal values, the
    lower ranges' (lower) indices first, as the kernel does."""
    torch = _torch()
    K = v.k
    vals = torch.stack(states[:K], 1).flatten(0, 1)  # (P*K, rows, d), range-major
    idx = torch.stack(states[K:], 1).flatten(0, 1)
    order = torch.sort(vals, dim=0, stable=True).indices[:K]
    return [*vals.gather(0, order).unbind(0), *idx.gather(0, order).unbind(0)]


def _kview(t: list) -> Any:
    """(n, D) buffers, one per k -> (n, K, D), squeezed to (n, K) when D = 1 (as pykeops)."""
    out = _torch().stack(t, dim=1)
    return out.squeeze(-1) if out.shape[-1] == 1 else out


# ---------------------------------------------------------------------- LogSumExp family


def _lse(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """State (m, s_1..s_G) = running max of F and sum_j exp(F - m) * G_j, per weight column;
    the root formula is Concat(F, G).  One exp per step: exp(-|m_a - m_b|)."""
    t = tirx()

    def combine(a, b):
        a_big = a[0] >= b[0]  # False when b is NaN: then m and s both become NaN
        same = a[0] == b[0]
        e = t.Select(same, t.const(1, acc), mathfns.exp(-t.abs(a[0] - b[0]), acc))
        return t.Select(a_big, a[0], b[0]), t.Select(a_big, a[1] + b[1] * e, a[1] * e + b[1])

    red = te.comm_reducer(combine, lambda t0, t1: (_inf(t0, -1.0), t.const(0, t1)), name="lse")

    def body(i, u, ax, j, w):
        comps = root(i, j)
        if acc != dtype:
            comps = [x.astype(acc) for x in comps]
        f = _masked(w, comps[0], _inf(acc, -1.0))
        return red((f, _masked(w, _select(u, comps[1:]), t.const(0, acc))), axis=ax)

    return list(space.compute(te, rows, dim - 1, body))


def _lse_state(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d - 1, acc), (d - 1, acc)]


def _lse_combine(states: list, v: Variant) -> list:
    torch = _torch()
    m, s = states
    top = m.amax(0)  # NaN propagates
    scale = torch.where(m == -math.inf, torch.zeros_like(m), torch.exp(m - top))
    return [top, (s * scale).sum(0)]


def _lse_uses(d: int) -> list:
    return [d - 1] + [1] * (d - 1)  # F is read by every weight column


def _lse_final(s, v, dtype):
    m, sm = s
    return (m + sm.log()).to(dtype)


def _softmax_final(s, v, dtype):
    """NaN where the max of F is infinite (+inf somewhere, or -inf everywhere), as
    torch.softmax: the weights are undefined there."""
    m, sm = s
    ratio = sm[:, 1:] / sm[:, :1]
    return _torch().where(m[:, :1].isinf(), math.nan, ratio).to(dtype)


def _raw_lse_final(s, v, dtype):
    m, sm = s
    return _torch().cat([m[:, :1], sm], dim=1).to(dtype)


# ---------------------------------------------------------------------- gradient plans


@dataclass(frozen=True)
class Step:
    """One reduction of a backward pass, called with the forward call's arguments followed by
    ``extra``: "grad" (the incoming gradient), "out" (the forward output), or the index of an
    earlier step of the same :class:`Chain` (its result)."""

    red: "Reduction"
    extra: tuple = ()


@dataclass(frozen=True)
class Chain:
    """The gradient is the result of the last step."""

    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Gathered:
    """The gradient flows through the selected (i, j) pairs (Min, Max, KMin, as torch.min):
    ``parts[u]`` is a Sum over the output rows of the gradient of component u of F, written
    with output-indexed variables only; the caller gathers the selected rows of the
    reduced-index arguments and of the gradient, and scatters the result back."""

    parts: tuple[Optional["Reduction"], ...]


Plan = Union[Chain, Gathered, None]


def _sum_vjp(r: "Reduction", k: int) -> Plan:
    """KeOps' rule: the gradient of Sum_j F is Sum_{j or i} Grad(F, v, g)."""
    g = r.extra(r.formula.dim)
    fg = sym_grad(r.formula, r.args[k], g)
    return None if fg.is_zero else Chain((Step(r.sum_of(fg, [(g, "gradient")], k), ("grad",)),))


def _lse_vjp(r: "Reduction", k: int) -> Plan:
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


def _softmax_vjp(r: "Reduction", k: int) -> Plan:
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


def _select_vjp(r: "Reduction", k: int) -> Plan:
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    recast = _recast(r.formula, red_cat, out_cat)
    args = tuple(_recast(a, red_cat, out_cat) for a in r.args)
    gv = r.extra(1)
    parts = []
    for u in range(r.formula.dim):
        comp = recast if recast.dim == 1 else f("Elem", recast, params=(u,))
        fg = sym_grad(comp, args[k], gv)
        parts.append(
            None
            if fg.is_zero
            else Reduction(fg, "Sum", out_cat, (*args, gv), (*r.names, "gradient"), r.dtype_acc)
        )
    return None if all(p is None for p in parts) else Gathered(tuple(parts))


def _recast(node: Node, frm: int, to: int) -> Node:
    """``node`` with every variable of category ``frm`` turned into one of category ``to``."""
    new: dict[int, Node] = {}
    for n in postorder(node):
        if n.is_var:
            pos, dim, cat = n.params
            new[id(n)] = var(pos, dim, to if cat == frm else cat)
        else:
            new[id(n)] = Node(n.op, tuple(new[id(a)] for a in n.args), n.params, n.dim)
    return new[id(node)]


def plan_reductions(plan: Plan) -> list["Reduction"]:
    """The reductions a gradient plan evaluates."""
    if isinstance(plan, Chain):
        return [s.red for s in plan.steps]
    if isinstance(plan, Gathered):
        return [p for p in plan.parts if p is not None]
    return []


# ------------------------------------------------------------- forward mode (JVP) plans
# A JVP plan is a Chain whose steps take, after the forward call's arguments, the tangents of
# the arguments ``ks`` ("tangents"), then the forward output ("out") or earlier results.


def _tangent_diff(r: "Reduction", node: Node, ks: tuple) -> Node:
    """dF = sum_k (dF/dv_k) t_k, the tangent t_k of argument k at position nargs + n."""
    out = None
    for n, k in enumerate(ks):
        d = sym_diff(node, r.args[k], r.tangent(n, k))
        out = d if out is None else add(out, d)
    return out


def _sum_jvp(r: "Reduction", ks: tuple) -> Plan:
    """d sum_j F = sum_j dF: a Sum again, over the same index."""
    dF = _tangent_diff(r, r.formula, ks)
    return Chain((Step(r.sum_with(dF, r.tangent_extra(ks)), ("tangents",)),))


def _lse_jvp(r: "Reduction", ks: tuple) -> Plan:
    """L = log sum_j e^F G: dL = sum_j e^(F - L) (G dF + dG) (G = 1 without a weight)."""
    dF = _tangent_diff(r, r.main, ks)
    lv = r.extra(r.formula.dim - 1, len(ks))
    inner = dF if r.weight is None else add(mul(r.weight, dF), _tangent_diff(r, r.weight, ks))
    fg = mul(f("Exp", sub(r.main, lv)), inner)
    return Chain(
        (Step(r.sum_with(fg, [*r.tangent_extra(ks), (lv, "output")]), ("tangents", "out")),)
    )


def _softmax_jvp(r: "Reduction", ks: tuple) -> Plan:
    """out = sum_j p_j w_j, p = softmax_j(F): d out = sum_j p_j (dw_j + (w_j - out) dF_j)."""
    w = r.weight
    ov, lv = r.extra(w.dim, len(ks)), r.extra(1, len(ks) + 1)
    inner = add(_tangent_diff(r, w, ks), mul(sub(w, ov), _tangent_diff(r, r.main, ks)))
    fg = mul(f("Exp", sub(r.main, lv)), inner)
    lse = dataclasses.replace(
        r, formula=make("Concat", r.main, intcst(1)), red="LogSumExp", weight=None, memo={}
    )
    extra = [*r.tangent_extra(ks), (ov, "output"), (lv, "logsumexp")]
    return Chain((Step(lse), Step(r.sum_with(fg, extra), ("tangents", "out", 0))))


def _select_jvp(r: "Reduction", ks: tuple) -> Plan:
    """Min/Max/KMin: the tangent of a selected value is dF at the selected (i, j) pair:
    ``parts[u]`` evaluates component u of dF with output-indexed variables only, on the
    reduced-index arguments (and their tangents) gathered at the selected rows."""
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    dF = _recast(_tangent_diff(r, r.formula, ks), red_cat, out_cat)
    extra = [(_recast(v, red_cat, out_cat), n) for v, n in r.tangent_extra(ks)]
    args = tuple(_recast(a, red_cat, out_cat) for a in r.args)
    parts = []
    for u in range(r.formula.dim):
        comp = dF if dF.dim == 1 else f("Elem", dF, params=(u,))
        names = (*r.names, *(n for _, n in extra))
        parts.append(
            Reduction(comp, "Sum", out_cat, (*args, *(v for v, _ in extra)), names, r.dtype_acc)
        )
    return Gathered(tuple(parts))


# ------------------------------------------------------------------------------ registry


def _k_variant(opt_arg, sum_scheme, dtype, acc) -> Variant:
    return Variant(k=opt_arg)


def _sum_variant(opt_arg, sum_scheme, dtype, acc) -> Variant:
    """pykeops' sum_scheme: "auto" is block summation for float32 accumulators, else direct."""
    if sum_scheme == "auto":
        return Variant(scheme="block" if acc == "float32" else "direct")
    return Variant(
        scheme={"direct_sum": "direct", "block_sum": "block", "kahan_scheme": "kahan"}[sum_scheme]
    )


def _plain(opt_arg, sum_scheme, dtype, acc) -> Variant:
    return Variant()


@dataclass(frozen=True)
class RedDef:
    name: str
    kind: str  # schedule tag
    kernel: str  # reductions with the same kernel name share compiled kernels (Min, ArgMin...)
    state: Callable[[int, Variant, str, str], list]  # (dim F, variant, dtype, acc) -> [(cols, dt)]
    compute: Callable[..., list]  # (te, root, rows, Space, dim, variant, dtype, acc) -> [tensor]
    finalize: Callable[..., Any]  # (states: [torch tensors], variant, dtype) -> output(s)
    combine: Callable[[list, Variant], list]  # partial states (P, rows, cols) -> states
    vjp: Optional[Callable[["Reduction", int], Plan]]  # None: no gradient
    grad_doc: str  # the README's "gradient" column
    jvp: Optional[Callable[["Reduction", tuple], Plan]] = None  # forward mode; None: none
    index_states: Optional[Callable[[Optional[int]], slice]] = None  # K -> the state buffers
    # holding positions along the reduced index (int32, -1: none), K of them
    variant: Callable[..., Variant] = _plain  # (opt_arg, sum_scheme, dtype, acc) -> Variant
    width: Optional[Callable[[int, Variant, str, str], int]] = None  # default: all state columns
    tree: Callable[[Node, Optional[Node]], Node] = lambda main, weight: main
    columns: Callable[[Node, int, int], Node] = lambda f, start, n: make(
        "Extract", f, params=(start, n)
    )
    # (kernel formula, start, n) -> the formula of state columns start..start+n-1 alone
    weight: Optional[str] = None  # None: no formula2; "optional"; "required"
    needs_k: bool = False
    scalar: bool = False  # F must have dim 1
    root_uses: Optional[Callable[[int], list]] = None  # per root component, if not 1 each
    doc: str = ""

    def selected(self, states: list, k: Optional[int]) -> Any:
        """The positions along the reduced index that the state holds, (n, K, D) int64."""
        return _torch().stack(states[self.index_states(k)], dim=1).long()

    def shift(self, states: list, k: Optional[int], offset: int) -> list:
        """States of a range of the reduced index starting at ``offset``, with positions made
        global (for :attr:`combine`)."""
        if self.index_states is None or offset == 0:
            return list(states)
        sl = self.index_states(k)
        out = list(states)
        out[sl] = [_torch().where(t >= 0, t + offset, t) for t in states[sl]]
        return out

    def registers(self, dim: int, v: Variant, dtype: str, acc: str) -> int:
        """State values per output row that a kernel keeps in registers across the j loop."""
        if self.width is not None:
            return self.width(dim, v, dtype, acc)
        return sum(c for c, _ in self.state(dim, v, dtype, acc))


REDUCTIONS: dict[str, RedDef] = {}


def reduction(name: str, **kw: Any) -> None:
    REDUCTIONS[name] = RedDef(name=name, **kw)


_ANY = "any order"
_SELECTED = "any order (through the selected indices)"
_lse_tree = lambda main, w: make("Concat", main, w if w is not None else intcst(1))  # noqa: E731
_softmax_tree = lambda main, w: make("Concat", main, make("Concat", intcst(1), w))  # noqa: E731

reduction(
    "Sum",
    kind="sum",
    kernel="sum",
    state=_sum_state,
    compute=_sum,
    finalize=_sum_final,
    combine=_sum_combine,
    vjp=_sum_vjp,
    jvp=_sum_jvp,
    grad_doc=_ANY,
    variant=_sum_variant,
    width=lambda d, v, dt, acc: d * (2 if v.scheme == "kahan" else 1),  # a block sum's total
    # changes once in BLOCK steps: only its partial sums count
    doc="sum_j F; gradient: a Sum again",
)
for _name, _is_min in (("Min", True), ("Max", False)):
    _arg, _low = f"Arg{_name}", _name.lower()
    _common = dict(
        kind="select",
        kernel=_low,
        state=_with_idx,
        compute=_minmax(_is_min),
        combine=_minmax_combine(_is_min),
        index_states=lambda k: slice(1, 2),
    )
    reduction(
        _name,
        finalize=lambda s, v, dt: s[0],
        vjp=_select_vjp,
        jvp=_select_jvp,
        grad_doc=_SELECTED,
        doc=f"{_low} over j, per component; differentiable (beyond pykeops)",
        **_common,
    )
    reduction(
        _arg,
        finalize=lambda s, v, dt: s[1].long(),
        vjp=None,
        grad_doc="— (int64)",
        doc=f"int64 index of the {_low}, per component (lowest on ties)",
        **_common,
    )
    reduction(
        f"{_name}_{_arg}",
        finalize=lambda s, v, dt: (s[0], s[1].long()),
        vjp=_select_vjp,
        jvp=_select_jvp,
        grad_doc=_SELECTED,
        doc=f"({_low}, int64 index) pair",
        **_common,
    )
_kcommon = dict(
    kind="kselect",
    kernel="kmin",
    needs_k=True,
    state=_kmin_state,
    compute=_kmin,
    combine=_kmin_combine,
    variant=_k_variant,
    index_states=lambda k: slice(k, 2 * k),
)
reduction(
    "KMin",
    finalize=lambda s, v, dt: _kview(s[: v.k]),
    vjp=_select_vjp,
    jvp=_select_jvp,
    grad_doc=_SELECTED,
    doc="the K smallest values, ascending: (n, K) or (n, K, D)",
    **_kcommon,
)
reduction(
    "ArgKMin",
    finalize=lambda s, v, dt: _kview(s[v.k :]).long(),
    vjp=None,
    grad_doc="— (int64)",
    doc="int64 indices of the K smallest values",
    **_kcommon,
)
reduction(
    "KMin_ArgKMin",
    finalize=lambda s, v, dt: (_kview(s[: v.k]), _kview(s[v.k :]).long()),
    vjp=_select_vjp,
    jvp=_select_jvp,
    grad_doc=_SELECTED,
    doc="(K smallest values, their int64 indices)",
    **_kcommon,
)
_lcommon = dict(
    columns=lambda f, start, n: make(
        "Concat", make("Elem", f, params=(0,)), make("Extract", f, params=(1 + start, n))
    ),
    kind="lse",
    kernel="lse",
    state=_lse_state,
    compute=_lse,
    combine=_lse_combine,
    scalar=True,
    root_uses=_lse_uses,
    tree=_lse_tree,
)
reduction(
    "LogSumExp",
    finalize=_lse_final,
    vjp=_lse_vjp,
    jvp=_lse_jvp,
    grad_doc=_ANY,
    weight="optional",
    doc="log sum_j exp(F) (F scalar), or log sum_j exp(F) G with formula2 = G",
    **_lcommon,
)
reduction(
    "LogSumExpWeight",
    finalize=_lse_final,
    vjp=_lse_vjp,
    jvp=_lse_jvp,
    grad_doc=_ANY,
    weight="required",
    doc="log sum_j exp(F) G",
    **_lcommon,
)
reduction(
    "SumSoftMaxWeight",
    finalize=_softmax_final,
    vjp=_softmax_vjp,
    jvp=_softmax_jvp,
    grad_doc=_ANY,
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


# ------------------------------------------------------------------- a use of a reduction


@dataclass(frozen=True)
class KernelSpec:
    """What one kernel computes: the reduction ``red`` of ``formula`` over the index of
    category ``1 - out_cat``, on ``dtype`` data with ``acc`` accumulators, in ``variant``."""

    formula: Node
    red: str
    out_cat: int
    dtype: str
    acc: str
    variant: Variant

    @property
    def rdef(self) -> "RedDef":
        return REDUCTIONS[self.red]

    def state(self) -> list:
        """The kernel's state buffers [(cols, dtype), ...]."""
        return self.rdef.state(self.formula.dim, self.variant, self.dtype, self.acc)

    def registers(self) -> int:
        return self.rdef.registers(self.formula.dim, self.variant, self.dtype, self.acc)

    def text_key(self, device_type: str) -> tuple:
        """A hashable key made of text (formula) and plain values, per device type."""
        return (
            str(self.formula),
            self.red,
            self.out_cat,
            self.dtype,
            self.acc,
            self.variant,
            device_type,
        )


CAT_LABEL = {0: "Vi", 1: "Vj", 2: "Pm"}


@dataclass(frozen=True, eq=False)
class Reduction:
    """``red`` of ``formula`` over the index of category ``1 - out_cat``.

    ``formula`` is ``RedDef.tree(main, weight)``: for the LogSumExp family ``Concat(F, G)``
    (``main`` = F, ``weight`` = G, the user's ``formula2``; for SumSoftMaxWeight
    ``Concat(F, Concat(1, G))``, as in KeOps).
    ``memo`` holds what is derived from it (gradient plans, compiled kernels): per instance,
    so a dropped Reduction takes them along."""

    formula: Node
    red: str
    out_cat: int  # 0: output indexed by i (axis=1), 1: by j (axis=0)
    args: tuple[Node, ...]  # declared variable per position
    names: tuple[str, ...]  # for error messages
    dtype_acc: str = "auto"
    k: Optional[int] = None  # K of the K-min reductions
    main: Optional[Node] = None
    weight: Optional[Node] = None
    sum_scheme: str = "auto"
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    cats: tuple = field(init=False, repr=False, compare=False)  # category per argument

    def __post_init__(self) -> None:
        object.__setattr__(self, "cats", tuple(v.params[2] for v in self.args))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "memo": {}}  # compiled kernels do not pickle

    @property
    def nargs(self) -> int:
        return len(self.args)

    @property
    def rdef(self) -> RedDef:
        return REDUCTIONS[self.red]

    def describe(self, k: int) -> str:
        pos, dim, cat = self.args[k].params
        return f"'{self.names[k]}' (argument {k}, declared {CAT_LABEL[cat]}({dim}))"

    def extra(self, dim: int, offset: int = 0) -> Node:
        """A new output-indexed argument (incoming gradient, saved output) at position
        ``nargs + offset``."""
        return var(self.nargs + offset, dim, self.out_cat)

    def resolve(self, dtype: str) -> tuple[str, Variant]:
        """(accumulator dtype, kernel variant) for data of ``dtype``."""
        acc = dtype if self.dtype_acc == "auto" else self.dtype_acc
        return acc, self.rdef.variant(self.k, self.sum_scheme, dtype, acc)

    def spec(self, dtype: str, split: bool = False) -> KernelSpec:
        """The kernel of this reduction for data of ``dtype`` (``split``: the split-j one)."""
        acc, variant = self.resolve(dtype)
        if split:
            variant = dataclasses.replace(variant, split=True)
        return KernelSpec(self.formula, self.red, self.out_cat, dtype, acc, variant)

    def grad_axis(self, k: int) -> int:
        """Output category of the gradient w.r.t. argument k (parameters: per output row,
        summed afterwards)."""
        cat = self.args[k].params[2]
        return cat if cat in (0, 1) else self.out_cat

    def sum_of(self, formula: Node, extra: Sequence[tuple[Node, str]], k: int) -> "Reduction":
        """A Sum of ``formula`` over the arguments plus ``extra``, giving the gradient w.r.t.
        argument k (so indexed like it)."""
        return Reduction(
            formula,
            "Sum",
            self.grad_axis(k),
            (*self.args, *(v for v, _ in extra)),
            (*self.names, *(n for _, n in extra)),
            self.dtype_acc,
            sum_scheme=self.sum_scheme,
        )

    def tangent(self, n: int, k: int) -> Node:
        """The tangent of argument k, the n-th tangent argument (position ``nargs + n``)."""
        pos, dim, cat = self.args[k].params
        return var(self.nargs + n, dim, cat)

    def tangent_extra(self, ks: Sequence[int]) -> list[tuple[Node, str]]:
        return [(self.tangent(n, k), f"tangent of {self.names[k]}") for n, k in enumerate(ks)]

    def sum_with(self, formula: Node, extra: Sequence[tuple[Node, str]]) -> "Reduction":
        """A Sum of ``formula`` over the same index as this reduction, over the arguments plus
        ``extra``."""
        return Reduction(
            formula,
            "Sum",
            self.out_cat,
            (*self.args, *(v for v, _ in extra)),
            (*self.names, *(n for _, n in extra)),
            self.dtype_acc,
            sum_scheme=self.sum_scheme,
        )

    def jvp(self, ks: tuple[int, ...]) -> Plan:
        """How to compute the forward-mode derivative (JVP) given tangents of the arguments
        ``ks`` (memoised).  Raises NotImplementedError for a reduction without a rule."""
        rule = self.rdef.jvp
        if rule is None:
            raise NotImplementedError(
                f"{self.red} has no forward-mode derivative (jvp); Sum, Min, Max, KMin and "
                "their Arg pairs, LogSumExp and SumSoftMaxWeight have one"
            )
        key = ("jvp", tuple(ks))
        if key not in self.memo:
            self.memo[key] = rule(self, tuple(ks))
        return self.memo[key]

    def vjp(self, k: int) -> Plan:
        """How to compute the gradient w.r.t. argument k (memoised); None: identically zero.
        Raises NotImplementedError for a reduction without a gradient rule."""
        rule = self.rdef.vjp
        if rule is None:
            raise NotImplementedError(
                f"{self.red} has no gradient (as in pykeops); use LogSumExp or SumSoftMaxWeight"
            )
        key = ("vjp", k)
        if key not in self.memo:
            self.memo[key] = rule(self, k)
        return self.memo[key]
