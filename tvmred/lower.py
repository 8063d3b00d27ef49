"""Formula tree + reduction -> a TVM tensor-expression PrimFunc with symbolic sizes.

Kernel signature (every kernel, every target)::

    main(*inputs, *outs, Mb, N)

* ``inputs``: the variables the formula uses, by position. A variable of the *output*
  category is ``(Mb * row_block, dim)`` (rows padded by the caller), one of the *reduced*
  category is ``(N, dim)``, a parameter is ``(dim,)``.
* ``outs``: the reduction's state buffers, each ``(Mb * row_block, cols)`` (see
  :mod:`tvmred.reductions`; a Sum has one, in the accumulator dtype).
* ``Mb``, ``N``: int32 scalars (the number of row blocks, the number of reduced rows).

Inside, the formula is evaluated once per (i, j) pair: every sub-formula whose value would
otherwise be recomputed (used by several output components, or several times) becomes a
per-pair stage ``s<k>`` (one TE compute with one output per component) that the schedule
computes at the j loop; everything else is inlined into the reduction block ``red``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from . import mathfns
from ._tvm import te as _te
from ._tvm import tirx
from .ops import REGISTRY
from .reductions import RedDef, Variant
from .schedules.shape import ReductionShape
from .tree import Node, postorder, var_cat, variables


@dataclass(frozen=True)
class Lowered:
    func: object  # tvm.tirx.PrimFunc (unscheduled)
    shape: ReductionShape


def slot_of(n: Node, arg: Node) -> int:
    """The first argument slot of ``n`` holding ``arg``."""
    return next(a for a, x in enumerate(n.args) if x is arg)


def _staged(formula: Node, dtype: str, root_uses: list[int]) -> set[int]:
    """Ids of the nodes that get a per-pair stage: those one of whose components would be
    evaluated more than once per pair if inlined (counted in the scalar expression DAG, seen
    through inlined parents), unless the operation is pure data movement."""
    order = postorder(formula)
    occ: dict[int, list[list[int]]] = {}  # node -> per output comp -> per (arg, comp) count
    for n in order:
        if not n.args:
            continue
        # the same child in several argument slots (SqDist(x, y) = (x-y | x-y)) gets the same
        # names: one expression reading it twice is CSE'd by the compiler, not a reason to stage
        names = [[f"_a{slot_of(n, arg)}_{k}_" for k in range(arg.dim)] for arg in n.args]
        exprs = REGISTRY[n.op].te(
            [[tirx().Var(s, dtype) for s in row] for row in names], n.params, dtype
        )
        flat = [s for a, row in enumerate(names) for s in row if slot_of(n, n.args[a]) == a]
        # 1 if the expression reads that component at all: repeats inside one expression are
        # left to the compiler's CSE (staging them would only add register pressure)
        occ[id(n)] = [
            [int(bool(re.search(re.escape(s) + r"\b", str(e)))) for s in flat] for e in exprs
        ]
    uses: dict[int, list[int]] = {id(formula): list(root_uses)}
    staged: set[int] = set()
    for n in reversed(order):
        u = uses.get(id(n), [1] * n.dim)
        stage = bool(n.args) and not REGISTRY[n.op].cheap and max(u) > 1
        if stage:
            staged.add(id(n))
        if not n.args:
            continue
        weight = u if not stage else [1] * n.dim
        col = 0
        for a in (arg for s, arg in enumerate(n.args) if slot_of(n, arg) == s):
            cnt = uses.setdefault(id(a), [0] * a.dim)
            for k in range(a.dim):
                cnt[k] += sum(w * row[col + k] for w, row in zip(weight, occ[id(n)]))
            col += a.dim
    return staged


def _reachable(outs: list) -> set[str]:
    seen: set[str] = set()
    todo = [t.op for t in outs]
    while todo:
        o = todo.pop()
        if o.name not in seen:
            seen.add(o.name)
            todo.extend(t.op for t in o.input_tensors)
    return seen


def _component(fn: Callable, k: int) -> Callable:
    return lambda i, j: fn(i, j)[k]  # (te.compute rejects lambdas with default arguments)


def lower(
    formula: Node,
    red: RedDef,
    out_cat: int,
    dtype: str,
    acc_dtype: str,
    row_block: int,
    variant: Variant,
    math: str = "poly",
) -> Lowered:
    """Build the unscheduled PrimFunc for ``Red_{reduced index} formula``, output index of
    category ``out_cat`` (0: i, so reduce over j -- ``axis=1``; 1: j, so reduce over i).
    ``math`` is the target's way of evaluating ``exp`` (``TargetTemplate.math``)."""
    with mathfns.mode(math):
        return _lower(formula, red, out_cat, dtype, acc_dtype, row_block, variant)


def _lower(formula, red, out_cat, dtype, acc_dtype, row_block, variant) -> Lowered:
    te = _te()
    Mb, N = te.var("Mb"), te.var("N")
    rows = Mb * row_block
    inputs = tuple(variables(formula))
    holders = {}
    for v in inputs:
        pos, dim, cat = v.params
        shape = (dim,) if cat == 2 else ((rows, dim) if cat == out_cat else (N, dim))
        holders[id(v)] = te.placeholder(shape, dtype, name=f"arg{pos}")

    def leaf(v: Node) -> Callable:
        h, cat = holders[id(v)], var_cat(v)
        if cat == 2:
            return lambda i, j: [h[k] for k in range(v.dim)]
        if cat == out_cat:
            return lambda i, j: [h[i, k] for k in range(v.dim)]
        return lambda i, j: [h[j, k] for k in range(v.dim)]

    root_uses = red.root_uses(formula.dim) if red.root_uses else [1] * formula.dim
    if len(red.state(formula.dim, variant, dtype, acc_dtype)) > 1:
        # a tuple reducer's combine reads the new element several times; staging it also
        # keeps extern calls (asinf, ...) out of the reducer's let-bindings, which TVM 0.27
        # miscompiles when they are vectorised
        root_uses = [2 * u for u in root_uses]
    staged = _staged(formula, dtype, root_uses)
    fns: dict[int, Callable] = {}
    stages: list[str] = []
    for n in postorder(formula):
        if n.is_var:
            fns[id(n)] = leaf(n)
            continue
        d, kids = REGISTRY[n.op], [fns[id(a)] for a in n.args]

        def inline(i, j, d=d, kids=kids, n=n):
            return d.te([k(i, j) for k in kids], n.params, dtype)

        if id(n) not in staged:
            fns[id(n)] = inline
            continue
        base = f"s{len(stages)}"
        ts = []
        for k in range(n.dim):  # one block per component, all computed at the same j
            ts.append(te.compute((rows, N), _component(inline, k), name=f"{base}_{k}"))
            stages.append(f"{base}_{k}")
        fns[id(n)] = lambda i, j, ts=ts: [x[i, j] for x in ts]

    root = fns[id(formula)]
    outs = red.compute(te, root, rows, N, formula.dim, variant, dtype, acc_dtype)
    func = te.create_prim_func([*(holders[id(v)] for v in inputs), *outs, Mb, N])
    cols = int(outs[0].shape[1])
    live = _reachable(outs)  # a stage can be folded away (e.g. a component the output ignores)
    stages = [s for s in stages if s in live]
    row_inputs = tuple(
        (holders[id(v)].name, v.dim)
        for v in inputs
        if var_cat(v) == out_cat and holders[id(v)].op.name in live
    )
    shape = ReductionShape(
        red.kind,
        cols,
        len(outs),
        dtype,
        acc_dtype,
        row_block,
        tuple(stages),
        len(inputs),
        row_inputs,
    )
    return Lowered(func, shape)
