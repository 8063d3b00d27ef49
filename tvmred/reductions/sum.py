"""Sum: ``sum_j F`` with three summation schemes (pykeops' ``sum_scheme``), its merge of
partial sums, and its derivatives (Sums again)."""

from __future__ import annotations

from typing import Any, Optional

from ..diff import grad as sym_grad
from ..ops import make
from ..tree import Node
from .core import (
    Chain,
    Plan,
    Reduction,
    Space,
    Step,
    Variant,
    by_column,
    masked,
    reduction,
    tangent_diff,
    tirx,
    xp_of,
)

BLOCK = 1024  # terms per partial sum of sum_scheme="block_sum" (about sqrt(1e6))

#: A Sum of a scalar times this many columns or more (``scaled``) runs in blocks of j where
#: the target's template says so (``TargetTemplate.two_pass_sums``): per block, the scalars
#: of its pairs, then each column's sum over the block as a matrix product's register tile
#: -- the one-pass loop updates every column at every pair, and a row block's columns
#: outnumber the vector registers (Gaussian gradient, D = 64: 64 accumulators, 64 x - y).
BLOCK_COLUMNS = 4


def scaled(f: Node) -> Optional[tuple[Node, Node]]:
    """(s, V) where ``f`` is the product of scalar factors, ``s`` (their product, in order,
    negated where ``f`` negates a product: a gradient w.r.t. y), and one factor V of several
    columns that is a variable or a sum, difference or negation of variables (computed again
    where the block's sums read it); else None."""
    factors, todo, negated = [], [f], False
    while todo:
        n = todo.pop()
        if n.op == "Mult":
            todo += [n.args[1], n.args[0]]
        elif n.op == "Minus" and n.args[0].op in ("Mult", "Minus"):
            negated, todo = not negated, [*todo, n.args[0]]
        else:
            factors.append(n)
    wide = [n for n in factors if n.dim > 1]
    scalars = [n for n in factors if n.dim == 1]
    if len(wide) != 1 or not scalars or not _plain_columns(wide[0]):
        return None
    s = scalars[0]
    for n in scalars[1:]:
        s = make("Mult", s, n)
    return (make("Minus", s) if negated else s), wide[0]


def _plain_columns(v: Node) -> bool:
    if v.is_var:
        return True
    return v.op in ("Subtract", "Add", "Minus") and all(a.is_var and a.dim == v.dim for a in v.args)


def _two_pass_of(f: Node, dtype: str) -> bool:
    parts = scaled(f)
    return parts is not None and parts[1].dim >= BLOCK_COLUMNS


def _sum(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """Schemes: "direct" (one accumulator), "block" (partial sums of BLOCK terms added to a
    running total: the same plain sum here, the schedule makes the partial sums -- see
    ``ReductionShape.block``) or "kahan" (compensated, two state buffers that ``finalize``
    combines; its update rule assumes a sequential reduction)."""
    t = tirx()
    if space.two_pass:
        return _blocks(te, root, rows, space, dim, dtype, acc)

    def comps(i, j):
        cs = root(i, j)
        return [x.astype(acc) for x in cs] if acc != dtype else cs

    if v.scheme != "kahan":
        add = te.sum
        zero = t.const(0, acc)
        if v.scheme == "copy":  # from -0, the exact identity of +: one term is its value
            add = te.comm_reducer(lambda a, b: a + b, lambda dt: t.const(-0.0, dt), name="copy")
            zero = t.const(-0.0, acc)
        body = lambda i, u, ax, j, w: add(masked(w, by_column(u, comps(i, j)), zero), axis=ax)  # noqa: E731
        return [space.compute(te, rows, dim, body)]
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
    body = lambda i, u, ax, j, w: red((masked(w, by_column(u, comps(i, j)), zero), zero), axis=ax)  # noqa: E731
    return list(space.compute(te, rows, dim, body))


def _blocks(te, root, rows, space: Space, dim, dtype, acc) -> list:
    """``sum_j s V`` (:func:`scaled`) over blocks of B = ``space.two_pass`` consecutive j:
    the block's s (``lse_e``, 0 past N), each column's sum over the block of s V
    (``lse_w0``: a matrix product's register tile in the schedule, V computed there from
    its variables), the blocks' sums added up (``red``; partial sums of blocks where the
    scheme has them: ReductionShape.block).  V past N is 0 too: e is, and V may be
    infinite there (a clamped read).  Split-j: the same in each chunk."""
    t = tirx()
    s_node, v_node = scaled(root.formula)
    s_at = root.part(s_node)

    def v_at(i, j, u):  # column u of V (plain columns: computed here, from its variables)
        a = [root.column(v, i, j, u) for v in ([v_node] if v_node.is_var else v_node.args)]
        arith = {
            "Subtract": lambda: a[0] - a[1],
            "Add": lambda: a[0] + a[1],
            "Minus": lambda: -a[0],
        }
        return a[0] if v_node.is_var else arith[v_node.op]()

    n, B = space.n, space.two_pass
    lead, first, count, blocks = space.blocks()
    zero = t.const(0, acc)

    def at(s: list, jj: Any) -> Any:  # the reduced row of the chunk's jj (clamped: inputs end)
        return t.min(first(*s) + jj, n - 1)

    def cast(x: Any) -> Any:
        return x.astype(acc) if acc != dtype else x

    def scalar(*ij):
        *s, i, j = ij
        return t.Select(t.likely(j < count(*s)), cast(s_at(i, at(s, j))[0]), zero)

    e = te.compute((*lead, rows, blocks * B), scalar, name="lse_e")
    k = te.reduce_axis((0, B), name="jw")

    def column(*idx):
        *s, i, b, u = idx
        jj = b * B + k
        v = cast(v_at(i, at(s, jj), u))
        return te.sum(e[(*s, i, jj)] * t.Select(t.likely(jj < count(*s)), v, zero), axis=k)

    w = te.compute((*lead, rows, blocks, dim), column, name="lse_w0")
    jb = te.reduce_axis((0, blocks), name="j")
    total = lambda *iu: te.sum(w[(*iu[:-1], jb, iu[-1])], axis=jb)  # noqa: E731
    return [te.compute((*lead, rows, dim), total, name="red")]


def _sum_state(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d, acc), (d, acc)] if v.scheme == "kahan" else [(d, acc)]


def _sum_value(s: list, v: Variant) -> Any:
    """The sum a Sum state holds, in float64 (Kahan: s - c)."""
    x = xp_of(s)
    a = x.astype(s[0], "float64")
    return a - x.astype(s[1], "float64") if v.scheme == "kahan" else a


def _sum_final(s: list, v: Variant, dt: Any) -> Any:
    return xp_of(s).astype(s[0] if v.scheme != "kahan" else _sum_value(s, v), dt)


def _sum_combine(states: list, v: Variant) -> list:
    x = xp_of(states)
    total = x.astype(_sum_value(states, v).sum(0), x.dtype_name(states[0]))
    rest = [x.zeros(total.shape, x.dtype_name(total), total)] if v.scheme == "kahan" else []
    return [total, *rest]


def _sum_vjp(r: Reduction, k: int) -> Plan:
    """KeOps' rule: the gradient of Sum_j F is Sum_{j or i} Grad(F, v, g)."""
    g = r.extra(r.formula.dim)
    fg = sym_grad(r.formula, r.args[k], g)
    return None if fg.is_zero else Chain((Step(r.sum_of(fg, [(g, "gradient")], k), ("grad",)),))


def _sum_jvp(r: Reduction, ks: tuple) -> Plan:
    """d sum_j F = sum_j dF: a Sum again, over the same index."""
    dF = tangent_diff(r, r.formula, ks)
    return Chain((Step(r.sum_with(dF, r.tangent_extra(ks)), ("tangents",)),))


def _sum_variant(opt_arg, sum_scheme, dtype, acc) -> Variant:
    """pykeops' sum_scheme: "auto" is block summation for float32 accumulators, else direct;
    tvmred's own "copy" (not a user's option): a direct sum from -0, whose one term over one
    row is its value exactly, -0 included (tvmred.hoist's sub-formulas)."""
    if sum_scheme == "auto":
        return Variant(scheme="block" if acc == "float32" else "direct")
    return Variant(
        scheme={
            "direct_sum": "direct",
            "block_sum": "block",
            "kahan_scheme": "kahan",
            "copy": "copy",
        }[sum_scheme]
    )


ANY = "any order"

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
    grad_doc=ANY,
    variant=_sum_variant,
    width=lambda d, v, dt, acc: d * (2 if v.scheme == "kahan" else 1),
    partial=lambda v: BLOCK if v.scheme == "block" else 0,
    two_pass=_two_pass_of,
    doc="sum_j F; gradient: a Sum again",
)
