"""A weighted LogSumExp in blocks of j -- SumSoftMaxWeight's attention layout: per block, F
of the block's j, its max, e^(F - max), then the weighted sums as matrix products of the
block's e and weights, and one rescale of the running state a block.

The online one-pass loop rescales every weight column at every pair (a multiply and a
multiply-add a column: with 64-value weights, 130 vector operations a pair besides F's), and
its state -- 65 columns of a row block -- spills.  Here a pair costs one exp and a
multiply-add a column, and the schedule (``schedules/two_pass.py``) keeps a tile of the
sums in registers over the block's j: the GEMM micro-kernel."""

from __future__ import annotations

from typing import Any, Callable

from .space import tirx


def _load_of(g: Any) -> Any:
    """(tensor, index tuple, cast dtype or None) if ``g`` reads one input value (an input
    of another dtype: under a Cast), else None; constant indices as ints."""
    cast = None
    if type(g).__name__ == "Cast":
        cast, g = str(g.ty), g.value
    kind = type(g).__name__
    if kind == "TensorSlice":
        tensor, idx = g.tensor, tuple(g.indices)
    elif kind == "Call" and getattr(g.op, "name", "") == "te.tensor_load":
        tensor, idx = g.args[0], tuple(g.args[1:])
    else:
        return None
    last = idx[-1]
    return tensor, (*idx[:-1], last.value if type(last).__name__ == "IntImm" else last), cast


def runs(cs: list) -> list:
    """The weights' components ``cs`` as runs: ``(first, width, at)`` where ``at(u)`` is
    column ``first + u`` -- consecutive columns of one input (``x[j, k0 + u]``, width > 1
    possible) or one component as it is (width 1)."""
    same = __import__("tvm_ffi").structural_equal
    out: list = []
    cur = None  # the run's (tensor, leading indices, cast, index - column)
    for c, g in enumerate(cs):
        hit = _load_of(g)
        if hit is None or not isinstance(hit[1][-1], int):
            cur = None
            out.append((c, 1, lambda u, g=g: g))
            continue
        tensor, idx, cast = hit
        key = (tensor, idx[:-1], cast, idx[-1] - c)
        if cur is not None and cur[0].same_as(tensor) and cur[2:] == key[2:] \
                and all(map(same, cur[1], key[1])):  # fmt: skip
            first, width, at = out[-1]
            out[-1] = (first, width + 1, at)
            continue
        cur = key
        out.append((c, 1, _reader(tensor, idx[:-1], cast, idx[-1])))
    return out


def _reader(tensor: Any, lead: tuple, cast: Any, base: int) -> Callable:
    """Column u of a run whose column 0 is ``tensor[(*lead, base)]``."""

    def at(u: Any) -> Any:
        v = tensor[(*lead, u + base)]
        return v.astype(cast) if cast is not None else v

    return at


def weighted_blocks(te, comps, fb, bm, lead, rows, blocks, B, count, acc, exp_term) -> list:
    """The block sums of the G weight columns, in order: ``lse_e`` (e^(F - max) of the
    block's j, 0 past N) then one block per run of columns (``runs``): ``lse_w{r}``, a sum
    over the block's j of e times the run's weights -- (rows, blocks, width) for a run of
    an input's columns, (rows, blocks) for one column.  ``comps(*s, i, j)``: the formula's
    components at j of the chunk (clamped at N - 1); returns the column readers
    ``[at(block index)]``, one a column."""
    t = tirx()
    zero = t.const(0, acc)

    def exps(*ij):
        *s, i, j = ij
        e = exp_term(fb[ij], bm[(*s, i, j // B)], False)
        return t.Select(t.likely(j < count(*s)), e, zero)

    ev = te.compute((*lead, rows, blocks * B), exps, name="lse_e")
    k = te.reduce_axis((0, B), name="jw")
    plan = []  # one reader a column: at -> the column's block sum at index `at`

    def run_sums(r: int, width: int) -> Any:
        def body(*idx):
            *s, i, b = idx[: len(lead) + 2]
            u = idx[-1] if width > 1 else 0
            jj = b * B + k
            run = runs(comps(*s, i, jj)[1:])[r]
            w = run[2](u)
            # the weight past N: 0 (e is 0 there too; its weight may be an infinity)
            w = t.Select(t.likely(jj < count(*s)), w, zero)
            return te.sum(ev[(*s, i, jj)] * w, axis=k)

        shape = (*lead, rows, blocks, width) if width > 1 else (*lead, rows, blocks)
        return te.compute(shape, body, name=f"lse_w{r}")

    probe = [t.Var(name, "int32") for name in ("s", "i", "j")[-len(lead) - 2 :]]
    layout = runs(comps(*probe)[1:])  # the runs' columns: the formula's, whatever the indices
    for r, (_, width, _) in enumerate(layout):
        sums = run_sums(r, width)
        if width > 1:
            plan += [lambda at, x=sums, u=u: x[(*at, u)] for u in range(width)]
        else:
            plan.append(lambda at, x=sums: x[at])
    return plan


__all__ = ["runs", "weighted_blocks"]
