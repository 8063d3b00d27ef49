"""Sum: ``sum_j F`` with three summation schemes (pykeops' ``sum_scheme``), its merge of
partial sums, and its derivatives (Sums again)."""

from __future__ import annotations

from typing import Any

from ..diff import grad as sym_grad
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


def _sum(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
    """Schemes: "direct" (one accumulator), "block" (partial sums of BLOCK terms added to a
    running total: the same plain sum here, the schedule makes the partial sums -- see
    ``ReductionShape.block``) or "kahan" (compensated, two state buffers that ``finalize``
    combines; its update rule assumes a sequential reduction)."""
    t = tirx()

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
    doc="sum_j F; gradient: a Sum again",
)
