"""Min, Max and their Arg forms: per component, NaN propagating, the lowest index on ties; the
gradient and tangent flow through the selected pairs (:class:`~.core.Gathered`, used by
the K-selections too)."""

from __future__ import annotations

from typing import Callable

from .. import mathfns
from ..diff import grad as sym_grad
from ..ops import f
from ..tree import map_cats
from .core import (
    Gathered,
    Plan,
    Reduction,
    Space,
    Variant,
    by_column,
    inf,
    masked,
    reduction,
    tangent_diff,
    tirx,
    xp_of,
)


def _keep(is_min: bool, dtype: str) -> Callable:
    """The accumulator (value a, index ia) is kept over b when it holds an element (ia >= 0:
    the identity never beats one, so a column of +inf still gets an index, as in torch) and a
    is NaN (NaN propagates) or a <= b (a >= b for max; false when b is NaN: NaN propagates):
    ties keep the lowest index."""

    def keep(a, ia, b):
        t = tirx()
        cmp = a <= b if is_min else a >= b
        return t.And(ia >= 0, t.Or(mathfns.is_nan(a, dtype), cmp))

    return keep


def _select_compute(is_min: bool) -> Callable:
    def compute(te, root, rows, space: Space, dim, v: Variant, dtype, acc):
        t = tirx()
        keep = _keep(is_min, dtype)

        def combine(a, b):
            k = keep(a[0], a[1], b[0])
            return t.Select(k, a[0], b[0]), t.Select(k, a[1], b[1])

        def identity(tv, ti):
            return inf(tv, 1.0 if is_min else -1.0), t.const(-1, ti)

        red = te.comm_reducer(combine, identity, name="argred")

        def body(i, u, ax, j, w):
            x = masked(w, by_column(u, root(i, j)), inf(dtype, 1.0 if is_min else -1.0))
            return red((x, masked(w, j, t.const(-1, "int32"))), axis=ax)

        return list(space.compute(te, rows, dim, body))

    return compute


def _select_combine(is_min: bool) -> Callable:
    def combine(states: list, v: Variant) -> list:
        vals, idx = states
        x = xp_of(states)
        bv, bi = vals[0], idx[0]
        for p in range(1, vals.shape[0]):  # the kernel's rule, folded over the ranges in order
            a, b = bv, vals[p]
            nan_a, nan_b = x.fn("isnan", a), x.fn("isnan", b)
            better = nan_a | (((a <= b) if is_min else (a >= b)) & ~nan_b)
            keep = (bi >= 0) & better
            bv, bi = x.where(keep, a, b), x.where(keep, bi, idx[p])
        return [bv, bi]

    return combine


def _with_idx(d: int, v: Variant, dt: str, acc: str) -> list:
    return [(d, dt), (d, "int32")]


def select_vjp(r: Reduction, k: int) -> Plan:
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    recast = map_cats(r.formula, red_cat, out_cat)
    args = tuple(map_cats(a, red_cat, out_cat) for a in r.args)
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


def select_jvp(r: Reduction, ks: tuple) -> Plan:
    """Min/Max/KMin: the tangent of a selected value is dF at the selected (i, j) pair:
    ``parts[u]`` evaluates component u of dF with output-indexed variables only, on the
    reduced-index arguments (and their tangents) gathered at the selected rows."""
    out_cat, red_cat = r.out_cat, 1 - r.out_cat
    dF = map_cats(tangent_diff(r, r.formula, ks), red_cat, out_cat)
    extra = [(map_cats(v, red_cat, out_cat), n) for v, n in r.tangent_extra(ks)]
    args = tuple(map_cats(a, red_cat, out_cat) for a in r.args)
    parts = []
    for u in range(r.formula.dim):
        comp = dF if dF.dim == 1 else f("Elem", dF, params=(u,))
        names = (*r.names, *(n for _, n in extra))
        parts.append(
            Reduction(comp, "Sum", out_cat, (*args, *(v for v, _ in extra)), names, r.dtype_acc)
        )
    return Gathered(tuple(parts))


SELECTED = "any order (through the selected indices)"


def _value(s: list, dt: str):
    """The selected values in the data dtype (a half type's values, selected in float32,
    are half values: the cast is exact)."""
    return xp_of(s).astype(s[0], dt)


for _name, _is_min in (("Min", True), ("Max", False)):
    _arg, _low = f"Arg{_name}", _name.lower()
    _common = dict(
        kind="select",
        kernel=_low,
        state=_with_idx,
        compute=_select_compute(_is_min),
        combine=_select_combine(_is_min),
        index_states=lambda k: slice(1, 2),
    )
    reduction(
        _name,
        finalize=lambda s, v, dt: _value(s, dt),
        vjp=select_vjp,
        jvp=select_jvp,
        grad_doc=SELECTED,
        doc=f"{_low} over j, per component; differentiable (beyond pykeops)",
        **_common,
    )
    reduction(
        _arg,
        finalize=lambda s, v, dt: xp_of(s).astype(s[1], "int64"),
        vjp=None,
        grad_doc="— (int64)",
        doc=f"int64 index of the {_low}, per component (lowest on ties)",
        **_common,
    )
    reduction(
        f"{_name}_{_arg}",
        finalize=lambda s, v, dt: (_value(s, dt), xp_of(s).astype(s[1], "int64")),
        vjp=select_vjp,
        jvp=select_jvp,
        grad_doc=SELECTED,
        doc=f"({_low}, int64 index) pair",
        **_common,
    )
