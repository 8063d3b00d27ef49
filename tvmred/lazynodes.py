"""Formula nodes for LazyTensors, named by small integers.

A LazyTensor holds the integer id of its (hash-consed) formula node, never the node: every
operation below takes and returns plain ints, strings and tuples, and is memoised, so
building an expression in a training loop costs one dictionary lookup per operation, and
``torch.compile`` runs these functions at trace time (``assume_constant_result``) instead
of tracing through the node machinery.

Variables: a LazyTensor numbers its variables 0, 1, ... in order of first appearance (as
pykeops), ``Var(position, dim, cat)`` in its formula; combining two LazyTensors renumbers the
second one's variables (``remap``).
"""

from __future__ import annotations

from typing import Optional

from .frontend import build_reduction
from .ops import intcst, make
from .reductions import Reduction
from .tree import Node, map_vars, var


def constant(fn):
    """Mark ``fn`` as torch.compile's ``assume_constant_result`` does (dynamo runs it and takes
    its result as a constant, never traces it), without importing torch or torch._dynamo."""
    fn._dynamo_marked_constant = True
    return fn


_NODES: list[Node] = []
_IDS: dict[Node, int] = {}
_MEMO: dict[tuple, object] = {}


def node(nid: int) -> Node:
    return _NODES[nid]


def nid_of(n: Node) -> int:
    i = _IDS.get(n)
    if i is None:
        i = _IDS[n] = len(_NODES)
        _NODES.append(n)
    return i


@constant
def leaf(pos: int, dim: int, cat: int) -> int:
    """The variable ``Var(pos, dim, cat)``."""
    key = (pos, dim, cat)
    hit = _LEAVES.get(key)
    if hit is None:
        hit = _LEAVES[key] = nid_of(var(pos, dim, cat))
    return hit


_LEAVES: dict[tuple, int] = {}
_OPS: dict[tuple, tuple[int, int]] = {}


@constant
def binary(name: str, a: int, b: int, pos: int) -> tuple[int, int]:
    """(id, dim) of ``name(a, b)``, b's single variable renumbered ``pos`` (-1: b as is):
    the common binary operation, in one lookup."""
    key = (name, a, b, pos)
    hit = _OPS.get(key)
    if hit is None:
        hit = _OPS[key] = apply(name, (a, b if pos < 0 else remap(b, (pos,))), ())
    return hit


@constant
def unary(name: str, a: int, params: tuple) -> tuple[int, int]:
    """(id, dim) of ``name(a; params)``, one lookup."""
    key = (name, a, params)
    hit = _OPS.get(key)
    if hit is None:
        hit = _OPS[key] = apply(name, (a,), params)
    return hit


@constant
def integer(n: int) -> int:
    """The constant ``IntCst(n)``."""
    return nid_of(intcst(n))


@constant
def apply(name: str, nids: tuple, params: tuple = ()) -> tuple[int, int]:
    """(id, dim) of ``name(*nodes; params)``, an operation of the registry (``Grad``/``Diff``
    (f, v, e) included).  Dimension errors are ValueErrors."""
    key = ("apply", name, nids, params)
    hit = _MEMO.get(key)
    if hit is None:
        args = [_NODES[i] for i in nids]
        n = make(name, *args, params=params)
        hit = _MEMO[key] = (nid_of(n), n.dim)
    return hit  # type: ignore[return-value]


@constant
def remap(nid: int, perm: tuple) -> int:
    """The formula with variable position p renumbered ``perm[p]``."""
    key = ("remap", nid, perm)
    hit = _MEMO.get(key)
    if hit is None:
        fn = lambda v: var(perm[v.params[0]], v.params[1], v.params[2])  # noqa: E731
        hit = _MEMO[key] = nid_of(map_vars(_NODES[nid], fn))
    return hit  # type: ignore[return-value]


@constant
def transpose(nid: int) -> int:
    """The formula with i- and j-variables exchanged."""
    key = ("transpose", nid)
    hit = _MEMO.get(key)
    if hit is None:
        swap = {0: 1, 1: 0, 2: 2}
        fn = lambda v: var(v.params[0], v.params[1], swap[v.params[2]])  # noqa: E731
        hit = _MEMO[key] = nid_of(map_vars(_NODES[nid], fn))
    return hit  # type: ignore[return-value]


@constant
def plan(nids: tuple, sig: tuple, options: tuple) -> tuple[tuple, int]:
    """(reduction spec, number of symbolic arguments) for formulas ``nids`` (F, weight) over
    variables ``sig`` -- (dim, cat, ind) per variable, ``ind`` -1 for data -- and
    ``options = (reduction_op, axis, opt_arg, dtype_acc, sum_scheme)``.  Final positions, as
    pykeops: symbolic variables at their ``ind``, data after them in order of appearance."""
    key = ("plan", nids, sig, options)
    hit = _MEMO.get(key)
    if hit is None:
        base = 1 + max((ind for _, _, ind in sig), default=-1)
        perm, decls, k = [], {}, base
        for dim, cat, ind in sig:
            pos = ind if ind >= 0 else k
            k += ind < 0
            if decls.setdefault(pos, (dim, cat)) != (dim, cat):
                raise ValueError(f"symbolic variable {pos} used with two dims or categories")
            perm.append(pos)
        missing = [p for p in range(base) if p not in decls]
        if missing:
            raise ValueError(f"symbolic variables use positions up to {base - 1} but not {missing}")
        if any(p != n for n, p in enumerate(perm)):
            nids = tuple(remap(n, tuple(perm)) for n in nids)
        red, axis, opt_arg, acc, scheme = options
        weight = nids[1] if len(nids) > 1 else -1
        spec = (
            nids[0],
            weight,
            red,
            axis,
            opt_arg,
            acc,
            scheme,
            tuple(decls[p] for p in sorted(decls)),
        )
        hit = _MEMO[key] = (spec, base)
    return hit  # type: ignore[return-value]


def reduction(spec: tuple) -> Reduction:
    """The :class:`Reduction` of ``spec = (formula id, weight id or -1, reduction_op, axis,
    opt_arg, dtype_acc, sum_scheme, ((dim, cat) per position))``, memoised (so its compiled
    kernels and gradient plans are reused from call to call)."""
    hit = _MEMO.get(spec)
    if hit is None:
        fid, wid, red, axis, opt_arg, dtype_acc, sum_scheme, decls = spec
        args = tuple(var(p, d, c) for p, (d, c) in enumerate(decls))
        names = tuple(f"var{p}" for p in range(len(decls)))
        weight: Optional[Node] = None if wid < 0 else _NODES[wid]
        hit = _MEMO[spec] = build_reduction(
            _NODES[fid], weight, args, names, red, axis, dtype_acc, opt_arg, sum_scheme
        )
    return hit  # type: ignore[return-value]


def text(nid: int) -> str:
    return str(_NODES[nid])
