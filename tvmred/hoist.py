"""Sub-formulas of one index's variables computed once per row, not once per pair.

In ``Exp((Normalize(x)|Normalize(y))*10)*b`` the normalized x_i and y_j depend on one index
each, yet a pair kernel (tvmred's and KeOps') evaluates them at every one of the M N pairs:
at D = 64 that is two thirds of the work.  Here such a sub-formula -- the largest one above
which its parent reads both indices -- is computed by a kernel of its own over its rows (a
Sum from -0 over one dummy row: the values themselves, -0 and NaN included), and the pair
kernel reads the result as one more variable.  Only where it pays: float32 and
float64 (a half type's values would be rounded to their storage type between the two
kernels), at least :data:`MIN_WORK` scalar operations a pair, never more values to read
than its variables hold, and on calls of enough pairs (:func:`pays`)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from . import schedules
from .ops import REGISTRY
from .reductions import Reduction
from .tree import Node, postorder, var, variables

#: The scalar operations a pair (counted once per distinct node and component) a sub-formula
#: must save to be worth its kernel and its variable.
MIN_WORK = 4


@dataclasses.dataclass(frozen=True)
class Hoisted:
    """``main`` reads the arguments of the reduction and then, one each, the results of
    ``subs``: (reduction of one index, positions of its arguments among the original ones)."""

    main: Reduction
    subs: tuple[tuple[Reduction, tuple[int, ...]], ...]
    work: int  # the scalar operations a pair it saves


def pays(h: Optional[Hoisted], n_out: int, n_red: int, device: str) -> bool:
    """Whether a call of ``n_out`` output rows and ``n_red`` reduced rows on a ``device``
    type runs ``h``: where the operations it saves reach the cost of its sub-formulas'
    kernels, (per kernel, per value written) in operations: the template's ``hoist_cost``."""
    if h is None:
        return False
    cost = schedules.for_device(device).hoist_cost
    rows = {h.main.out_cat: n_out, 1 - h.main.out_cat: n_red}
    spent = sum(cost[0] + cost[1] * rows[side(h, ks)] * s.formula.dim for s, ks in h.subs)
    return n_out * n_red * h.work >= spent


def plan(r: Reduction, dtype: str) -> Optional[Hoisted]:
    """How to run ``r`` on ``dtype`` data with its one-index sub-formulas computed per row;
    None where there is none worth it (memoised on ``r``)."""
    key = ("hoist", dtype)
    if key not in r.memo:
        r.memo[key] = _plan(r) if dtype in ("float32", "float64") else None
    return r.memo[key]


def side(h: Hoisted, ks: tuple) -> int:
    """The index (0: i, 1: j) of a sub-formula's rows, from the positions of its arguments."""
    return next(c for c in (h.main.args[k].params[2] for k in ks) if c != 2)


def _plan(r: Reduction) -> Optional[Hoisted]:
    order = postorder(r.formula)
    cats: dict[int, frozenset] = {}  # node -> the indices (0: i, 1: j) its variables have
    for n in order:
        if n.is_var:
            cats[id(n)] = frozenset({n.params[2]} & {0, 1})
        else:
            cats[id(n)] = frozenset().union(*(cats[id(a)] for a in n.args))
    picked: list[Node] = []
    for n in order:
        if len(cats[id(n)]) == 2:  # its one-index arguments are the largest ones ...
            todo = [a for a in n.args if len(cats[id(a)]) == 1]
            while todo:  # ... or, where one is not worth it (Concat(1, G)), theirs
                a = todo.pop(0)
                if _worth(a):
                    picked.append(a)
                else:
                    todo += [c for c in a.args if cats[id(c)]]
    picked = list(dict.fromkeys(picked))  # distinct, in order
    if not picked:
        return None
    subs, new = [], {}
    for t, n in enumerate(picked):
        (cat,) = cats[id(n)]
        used = variables(n)
        # its variables as i-variables (whichever index they have): the same sub-formula of
        # x and of y is then one kernel; over one dummy row, a Sum from -0 is the value
        ins = [var(s, v.params[1], 2 if v.params[2] == 2 else 0) for s, v in enumerate(used)]
        sub = Reduction(
            _substitute(n, {id(v): w for v, w in zip(used, ins)}),
            "Sum",
            0,
            tuple(ins),
            tuple(r.names[v.params[0]] for v in used),
            sum_scheme="copy",
        )
        subs.append((sub, tuple(v.params[0] for v in used)))
        new[id(n)] = var(r.nargs + t, n.dim, cat)
    main = dataclasses.replace(
        r,
        formula=_substitute(r.formula, new),
        args=(*r.args, *(new[id(n)] for n in picked)),
        names=(*r.names, *(f"hoisted {str(n)[:60]}" for n in picked)),
        main=None if r.main is None else _substitute(r.main, new),
        weight=None if r.weight is None else _substitute(r.weight, new),
        memo={},
    )
    return Hoisted(main, tuple(subs), sum(_work(n) for n in picked))


def _worth(n: Node) -> bool:
    """At least MIN_WORK scalar operations a pair, and no more values than its variables."""
    if n.is_var or n.dim > sum(v.params[1] for v in variables(n)):
        return False
    return _work(n) >= MIN_WORK


def _work(n: Node) -> int:
    """Scalar operations of ``n`` a pair: over its distinct non-data-movement nodes, the
    components of the widest of the node and its arguments (Scalprod(x, x) of 64-vectors: 64)."""
    return sum(
        max(m.dim, *(a.dim for a in m.args))
        for m in postorder(n)
        if m.args and not REGISTRY[m.op].cheap
    )


def _substitute(root: Node, new: dict[int, Node]) -> Node:
    """``root`` with each node whose id is a key of ``new`` replaced by its value."""
    out: dict[int, Node] = {}
    for n in postorder(root, frozenset(new)):
        if id(n) in new:
            out[id(n)] = new[id(n)]
        elif n.args:
            out[id(n)] = Node(n.op, tuple(out[id(a)] for a in n.args), n.params, n.dim)
        else:
            out[id(n)] = n
    return out[id(root)]
