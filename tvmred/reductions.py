"""The reduction registry: each reduction is one :class:`RedDef` with its TE compute, the
``kind`` tag that schedules read, and its gradient rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def _select(u: Any, exprs: list) -> Any:
    """exprs[u] for a loop variable u (folded away once the schedule unrolls u)."""
    from tvm import tirx

    e = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        e = tirx.Select(u == k, exprs[k], e)
    return e


def _sum_compute(te: Any, root: Callable, rows: Any, n: Any, dim: int, dtype: str, acc: str):
    j = te.reduce_axis((0, n), name="j")

    def body(i: Any, u: Any) -> Any:
        comps = root(i, j)
        if acc != dtype:
            comps = [x.astype(acc) for x in comps]
        return te.sum(_select(u, comps), axis=j)

    return te.compute((rows, dim), body, name="red")


@dataclass(frozen=True)
class RedDef:
    name: str
    kind: str  # schedule tag
    compute: Callable[..., Any]  # (te, root(i, j) -> exprs, rows, N, dim, dtype, acc) -> tensor
    doc: str = ""


REDUCTIONS: dict[str, RedDef] = {
    "Sum": RedDef("Sum", "sum", _sum_compute, "out_i = sum_j F(i, j); gradient: a Sum again"),
}
