"""Wide formulas in ``lower.py``: the reducer reads column u of the formula from a chain of its
components (``by_column``) that the schedule unrolls, a copy per column, so a wide root with
long components gets stages (each copy then holds reads: :func:`wide_root`); and TE builds a
compute's expression at index variables of its own, so the components of a wide staged node,
built anew for each of its computes, cost dim^2 expressions (:func:`components`)."""

from __future__ import annotations

from typing import Any, Callable

from ._tvm import tirx

#: A root of several columns whose inlined components, copied once per column, would exceed
#: this many characters is staged: Exp(x*y) of D = 64 (19 million characters unrolled)
#: compiled in 13-15 s, 2.5 s staged -- but ran 62-70 ms a 3000 x 3000 call against 80-86 ms
#: staged (2-vCPU Zen 4; at D = 16 the same either way)
ROOT_COPY_CHARS = 200_000


def wide_root(formula: Any, chars: int) -> set:
    """{id(formula)} where its ``chars`` characters of components, copied once per column,
    exceed ROOT_COPY_CHARS; else empty (``lower._staged`` stages what is in it, and for data
    movement its arguments instead)."""
    return {id(formula)} if formula.dim * chars > ROOT_COPY_CHARS else set()


def components(dim: int, nrows: int, exprs: Callable) -> Callable:
    """k -> the fcompute of component k of a node's stage.  A wide node's components are
    built once, at index variables of their own, and each put at its compute's indices
    (built anew for each component, a node of 1000 components cost 10^6 expressions:
    OneHot(s, 1000), 18 s a kernel); a narrow one's, or any whose expression ``moved``
    cannot rebuild, anew each time."""
    t = tirx()
    at = [t.Var(f"stage_i{q}", "int32") for q in range(nrows)] + [t.Var("stage_j", "int32")]
    built: list = []

    def comp(k: int) -> Callable:
        def f(*ij: Any) -> Any:
            if dim > WIDE_STAGE:
                if not built:
                    built.extend(exprs(unpair(tuple(at[:-1])), at[-1]))
                memo = {v.__chandle__(): w for v, w in zip(at, ij)}
                out = moved(built[k], memo)
                if out is not None:
                    return out
            return exprs(unpair(ij[:-1]), ij[-1])[k]

        return f

    return comp


#: stages of more components than this build their expressions once (:func:`components`)
WIDE_STAGE = 8


def moved(e: Any, memo: dict) -> Any:
    """``e`` with the variables in ``memo`` (by object handle) replaced, shared
    sub-expressions rebuilt once; None for a node type it does not know."""
    key = e.__chandle__() if hasattr(e, "__chandle__") else id(e)
    if key in memo:
        return memo[key]
    t = tirx()
    kind = type(e).__name__
    if kind in ("Var", "IntImm", "FloatImm", "StringImm", "Tensor", "Op"):
        out = e
    elif kind in ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max",
                  "EQ", "NE", "LT", "LE", "GT", "GE", "And", "Or"):  # fmt: skip
        a, b = moved(e.a, memo), moved(e.b, memo)
        out = None if a is None or b is None else type(e)(a, b)
    elif kind == "Not":
        a = moved(e.a, memo)
        out = None if a is None else t.Not(a)
    elif kind == "Select":
        parts = [moved(x, memo) for x in (e.condition, e.true_value, e.false_value)]
        out = None if any(x is None for x in parts) else t.Select(*parts)
    elif kind == "Cast":
        v = moved(e.value, memo)
        out = None if v is None else t.Cast(e.ty, v)
    elif kind == "Let":
        v, b = moved(e.value, memo), moved(e.body, memo)
        out = None if v is None or b is None else t.Let(e.var, v, b)
    elif kind == "Call":
        args = [moved(x, memo) for x in e.args]
        out = (
            None
            if any(x is None for x in args)
            else type(e)(e.op, args, e.attrs, e.ty_args, ret_ty=e.ty)
        )
    elif kind == "TensorSlice":
        idx = [moved(x, memo) for x in e.indices]
        out = None if any(x is None for x in idx) else e.tensor[tuple(idx)]
    else:
        return None
    memo[key] = out
    return out


def pair(i: Any) -> tuple:
    """A row index as a tuple: (i,), or a ranged kernel's (block, row in block)."""
    return i if isinstance(i, tuple) else (i,)


def unpair(ix: tuple) -> Any:
    return ix if len(ix) > 1 else ix[0]
