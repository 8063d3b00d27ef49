"""The front end: formula text, aliases and pykeops' options -> a checked
:class:`~tvmred.reductions.Reduction` (parsed, dimension-checked, nothing compiled)."""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

from .errors import DimError
from .parse import Alias, parse, parse_aliases
from .reductions import MAX_K, REDUCTIONS, Reduction
from .tree import Node, variables


def make_reduction(
    formula: str,
    aliases: Sequence[str],
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int] = None,
    formula2: Optional[str] = None,
    sum_scheme: str = "auto",
) -> Reduction:
    decls = parse_aliases(list(aliases))
    by_pos = {a.var.params[0]: a for a in decls}
    inline: list[Node] = []
    main = parse(formula, decls, inline)
    weight = parse(formula2, decls, inline) if formula2 is not None else None
    used = variables(main) + (variables(weight) if weight is not None else [])
    for v in used + sorted(inline, key=lambda v: v.params[0]):
        pos = v.params[0]  # a variable written inline, as Var(pos, dim, cat) or Vi(pos, dim)
        if pos not in by_pos:
            by_pos[pos] = Alias(None, v)
        elif by_pos[pos].var is not v:
            raise ValueError(f"formula uses {v}, but position {pos} is {by_pos[pos].var}")
    nargs = max(by_pos) + 1 if by_pos else 0
    missing = [p for p in range(nargs) if p not in by_pos]
    if missing:
        raise ValueError(f"variables are given for positions up to {nargs - 1} but not {missing}")
    names = tuple(by_pos[p].name or str(by_pos[p].var) for p in range(nargs))
    args = tuple(by_pos[p].var for p in range(nargs))
    return build_reduction(
        main, weight, args, names, reduction_op, axis, dtype_acc, opt_arg, sum_scheme
    )


def check_options(
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int],
    has_weight: bool,
    sum_scheme: str,
) -> None:
    """The reduction options are valid (ValueError / NotImplementedError naming the problem)."""
    if reduction_op not in REDUCTIONS:
        raise NotImplementedError(
            f"reduction_op={reduction_op!r} is not supported (available: {sorted(REDUCTIONS)})"
        )
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis not in (0, 1):
        raise ValueError(f"axis must be 0 (reduce over i) or 1 (reduce over j), got {axis!r}")
    if dtype_acc not in ("auto", "float32", "float64"):
        raise ValueError(
            f"dtype_acc must be 'auto', 'float32' or 'float64', got {dtype_acc!r} (half "
            "inputs are accumulated in float32)"
        )
    rd = REDUCTIONS[reduction_op]
    if rd.needs_k:
        if not isinstance(opt_arg, numbers.Integral) or isinstance(opt_arg, bool) or opt_arg < 1:
            raise ValueError(f"reduction_op={reduction_op!r} needs opt_arg=K, an integer >= 1")
        if opt_arg > MAX_K:
            raise ValueError(
                f"reduction_op={reduction_op!r}: opt_arg={opt_arg} is above the limit K <= "
                f"{MAX_K} (the K-selection keeps K values per row, and its compile time grows "
                "faster than K); for more neighbours, use torch.topk on blocks of a dense matrix"
            )
    elif opt_arg is not None:
        raise ValueError(f"reduction_op={reduction_op!r} takes no opt_arg")
    if rd.weight is None and has_weight:
        raise ValueError(f"reduction_op={reduction_op!r} takes no formula2")
    if rd.weight == "required" and not has_weight:
        raise ValueError(f"reduction_op={reduction_op!r} requires formula2 (the weight)")
    if sum_scheme not in ("auto", "direct_sum", "block_sum", "kahan_scheme"):
        raise ValueError(f"unknown sum_scheme {sum_scheme!r}")


def build_reduction(
    main: Node,
    weight: Optional[Node],
    args: tuple[Node, ...],
    names: tuple[str, ...],
    reduction_op: str,
    axis: int,
    dtype_acc: str,
    opt_arg: Optional[int] = None,
    sum_scheme: str = "auto",
) -> Reduction:
    """The :class:`Reduction` of formula ``main`` (and weight) over declared ``args``."""
    check_options(reduction_op, axis, dtype_acc, opt_arg, weight is not None, sum_scheme)
    rd = REDUCTIONS[reduction_op]
    for v in variables(main) + (variables(weight) if weight is not None else []):
        pos = v.params[0]
        if pos >= len(args) or args[pos] is not v:
            raise ValueError(f"formula uses {v}, which is not among the declared variables")
    if rd.scalar and main.dim != 1:
        raise DimError(f"reduction_op={reduction_op!r} needs a scalar formula, got dim {main.dim}")
    return Reduction(
        rd.tree(main, weight),
        rd.name,
        1 - int(axis),
        args,
        names,
        dtype_acc,
        None if opt_arg is None else int(opt_arg),
        main,
        weight,
        sum_scheme,
    )


def reduction_from(
    formula: str,
    aliases: Sequence[str],
    reduction_op: str = "Sum",
    axis: int = 0,
    opt_arg: Optional[int] = None,
    formula2: Optional[str] = None,
    dtype_acc: str = "auto",
    use_double_acc: bool = False,
    sum_scheme: str = "auto",
) -> Reduction:
    """The :class:`Reduction` of ``Genred``'s keyword arguments (the tools that build one
    without a binding -- export, tune -- call this, as ``Genred`` does)."""
    if use_double_acc:
        dtype_acc = "float64"
    return make_reduction(
        formula, aliases, reduction_op, axis, dtype_acc, opt_arg, formula2, sum_scheme
    )
